"""Writes to Deployments: their scale, their version, their annotations.

Scaling goes through the `deployments/scale` subresource only, read fresh and
written back with its resourceVersion, so a change made by someone else is
never overwritten from a stale cache (409: read again). Only the leader
writes. A version is the image tag (with the environment's prefix:
`1.0.0-prod`), `wakegate.dev/version`, and WAKEGATE_VERSION when the container
has that variable, in one patch.

A Deployment cannot be told which pod a scale-down removes; its ReplicaSet
removes the pods with the lowest `controller.kubernetes.io/pod-deletion-cost`
first (among the ready ones; beta since Kubernetes 1.22), so the pods chosen
to go are given the lowest cost there is before the scale is lowered.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client as k8s

from ...spec import image_tag
from ..base import StartFailed
from .client import VERSION_ANNOTATION, KubeError, Obj, ObjKey, call, image_repository, key_of
from .discovery import Placement, Where

log = logging.getLogger("wakegate.kubernetes")

_SCALE_ATTEMPTS = 5
MERGE_PATCH = "application/merge-patch+json"
DELETION_COST_ANNOTATION = "controller.kubernetes.io/pod-deletion-cost"
LOWEST_DELETION_COST = str(-(2**31))  # an int32: below whatever cost anyone else gave


class DeploymentWriter:
    def __init__(self, api_client: Callable[[], k8s.ApiClient], is_leader: Callable[[], bool],
                 cache: Callable[[], dict[ObjKey, Obj]]) -> None:
        self._api_client = api_client
        self._is_leader = is_leader
        self._cache = cache  # the Deployments informer's

    def _apps(self) -> k8s.AppsV1Api:
        return k8s.AppsV1Api(self._api_client())

    def check_leader(self) -> None:
        if not self._is_leader():
            raise StartFailed("this controller is not the leader (any more)")

    async def scale(self, placement: Placement | None, target: int, at_least: bool) -> int:
        """Set the Deployment's replicas from a fresh read; with at_least, never lower them."""
        if placement is None:
            raise StartFailed("the Deployment is gone")
        apps = self._apps()
        for _ in range(_SCALE_ATTEMPTS):
            self.check_leader()
            scale = await call(apps.read_namespaced_deployment_scale,
                               placement.deployment, placement.namespace)
            current = int((scale.get("spec") or {}).get("replicas") or 0)
            if current == target or (at_least and current > target):
                return current
            scale.setdefault("spec", {})["replicas"] = target
            try:
                await call(apps.replace_namespaced_deployment_scale,
                           placement.deployment, placement.namespace, scale)
                log.info("scaled %s/%s from %d to %d replicas", placement.namespace,
                         placement.deployment, current, target)
                return target
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise StartFailed(f"the scale of {placement.namespace}/{placement.deployment} kept "
                          "changing under us")

    async def mark_to_go(self, where: Where, pods: list[str], others_stay: bool
                         ) -> None:
        """Give `pods` the lowest deletion cost, so that the next scale-down removes them first
        (a pod already gone is fine). Marked even when none stay, one path for every stop; a
        failure then does not matter, else it is StartFailed: nothing may be scaled down, as
        the ReplicaSet could remove a pod that still serves instead."""
        namespace, deployment = where
        core = k8s.CoreV1Api(self._api_client())
        body = {"metadata": {"annotations": {DELETION_COST_ANNOTATION: LOWEST_DELETION_COST}}}
        try:
            self.check_leader()
            for pod in pods:
                try:
                    await call(core.patch_namespaced_pod, pod, namespace, body,
                               _content_type=MERGE_PATCH)
                except KubeError as exc:
                    if exc.status != 404:
                        raise
        except (KubeError, StartFailed) as exc:
            if others_stay:
                raise StartFailed(f"could not mark the pods of {namespace}/{deployment} that "
                                  f"go: {exc}") from None

    async def set_version(self, placement: Placement, version: str,
                          annotations: dict[str, str], prefix: str) -> None:
        """The image tag (`{version}-{prefix}`, see prefixes.py), wakegate.dev/version, and
        WAKEGATE_VERSION when the container has that variable; `annotations` too, in the
        same write."""
        deployment = self._cache().get(placement.where)
        containers = (((deployment or {}).get("spec") or {}).get("template") or {}) \
            .get("spec", {}).get("containers") or []
        if not containers:
            raise LookupError(f"the Deployment {placement.namespace}/{placement.deployment} "
                              "has no container")
        first = containers[0]
        repository = image_repository(first.get("image", ""))
        container: dict[str, Any] = {"name": first["name"],
                                     "image": f"{repository}:{image_tag(version, prefix)}"}
        if any(e.get("name") == "WAKEGATE_VERSION" for e in first.get("env") or []):
            # A container that is told its version (as the local runtime does) is told again.
            container["env"] = [{"name": "WAKEGATE_VERSION", "value": version}]
        body = {
            "metadata": {"annotations": {VERSION_ANNOTATION: version, **annotations}},
            "spec": {"template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: version}},
                "spec": {"containers": [container]},
            }},
        }
        # A strategic merge patch: containers merge by name, the others stay.
        self.written(await call(self._apps().patch_namespaced_deployment, placement.deployment,
                                placement.namespace, body))

    async def annotate(self, placement: Placement, annotations: dict[str, str]) -> Obj:
        """A merge patch of the Deployment's annotations; the Deployment as written."""
        body = {"metadata": {"annotations": annotations}}
        return await call(self._apps().patch_namespaced_deployment, placement.deployment,
                          placement.namespace, body, _content_type=MERGE_PATCH)

    def written(self, obj: Obj) -> None:
        """Our own write, in the cache at once: the next pass must not act on the old one."""
        self._cache()[key_of(obj)] = obj

