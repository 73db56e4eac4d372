"""The Kubernetes runtime's ephemeral environments: a namespace each (runtimes.base.EphemeralStore).

`create` makes the namespace (labelled as an environment of kind ephemeral,
its record in annotations: ephemeral_records.py), then copies into it the
source environment's Deployment and Service of each service
(ephemeral_copies.py: at 0 replicas, the requested version's image tag). If
any step fails the namespace is deleted again, so nothing is left. `extend`
moves the expiry annotation; `remove` deletes the namespace, which takes
everything in it (Deployments, Services, key Secrets, pods) with it.

Every write is put into the informers' caches at once and discovery is run,
so that the caller sees the new environment (or its absence) without waiting
for the watch events; a namespace being deleted is no environment any more
(discovery.py), while the API server empties it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from kubernetes_asyncio import client as k8s

from ...model import EphemeralRecord, Key
from ...spec import InstanceSpec
from .client import KubeError, Obj, ObjKey, call
from .discovery import Placement
from .ephemeral_copies import deployment_copy, service_copy
from .ephemeral_records import (
    ENVIRONMENT_LABEL,
    being_deleted,
    expiry_annotations,
    is_ephemeral,
    namespace_object,
    record_of,
)
from .scale import MERGE_PATCH

log = logging.getLogger("wakegate.kubernetes")

__all__ = ["EphemeralPlaces", "KubeEphemeral"]


class EphemeralPlaces(Protocol):
    """What the store needs of the runtime: the client, the caches, where instances are."""

    def api_client(self) -> k8s.ApiClient: ...

    def namespace_cache(self) -> dict[ObjKey, Obj]: ...

    def ephemeral_namespaces(self) -> list[Obj]: ...

    def deployment_cache(self) -> Mapping[ObjKey, Obj]: ...

    def placement_of(self, key: Key) -> Placement | None: ...

    def objects_written(self, namespaces: list[Obj], deployments: list[Obj]) -> None:
        """Our own writes, in the caches at once, then discovery again."""


class KubeEphemeral:
    def __init__(self, places: EphemeralPlaces, warn: Callable[[str], None]) -> None:
        self._places = places
        self._warn = warn

    def _namespaces_of(self, name: str) -> list[Obj]:
        """The live namespaces of the ephemeral environment `name` (normally one)."""
        # Only one whose record can be read: a namespace that is no environment (its
        # annotations wrong) is neither served nor deleted.
        return [obj for obj in self._places.namespace_cache().values()
                if is_ephemeral(obj) and not being_deleted(obj)
                and (obj["metadata"].get("labels") or {}).get(ENVIRONMENT_LABEL) == name
                and record_of(obj, lambda _problem: None) is not None]

    def records(self) -> list[EphemeralRecord]:
        # Discovery's (discovery.environments): one rule for what is an environment.
        return [record for obj in self._places.ephemeral_namespaces()
                if (record := record_of(obj, self._warn)) is not None]

    async def create(self, record: EphemeralRecord, services: list[InstanceSpec]) -> None:
        """The namespace, then a copy of the source's Deployment and Service of every service
        of `record.versions` (on Kubernetes the services are the cluster's, so the record,
        not `services`, the config's view, says which); on failure the namespace is deleted
        again and the failure raised."""
        core = k8s.CoreV1Api(self._places.api_client())
        apps = k8s.AppsV1Api(self._places.api_client())
        sources = [(service, version, self._source_of(record.source, service))
                   for service, version in record.versions]
        namespace_obj = await call(core.create_namespace, namespace_object(record))
        namespace = namespace_obj["metadata"]["name"]
        made: list[Obj] = []
        try:
            for name, version, (deployment, placement) in sources:
                service = await call(core.read_namespaced_service, placement.deployment,
                                     placement.namespace)
                made.append(await call(apps.create_namespaced_deployment, namespace,
                                       deployment_copy(deployment, name, namespace, version)))
                await call(core.create_namespaced_service, namespace,
                           service_copy(service, name, namespace))
        except BaseException as exc:
            log.warning("could not make the ephemeral environment %s (%s); deleting the "
                        "namespace %s", record.name, exc, namespace)
            try:
                await self._delete(namespace)
            except Exception as cleanup:  # the first failure is the one to report
                log.warning("could not delete the namespace %s: %s", namespace, cleanup)
            raise
        log.info("made the ephemeral environment %s: namespace %s, %d service%s from %s",
                 record.name, namespace, len(made), "" if len(made) == 1 else "s",
                 record.source)
        self._places.objects_written([namespace_obj], made)

    def _source_of(self, source: str, service: str) -> tuple[Obj, Placement]:
        """The source environment's live Deployment of this service, and where it is."""
        placement = self._places.placement_of((source, service))
        deployment = self._places.deployment_cache().get(placement.where) \
            if placement is not None else None
        if placement is None or deployment is None:
            raise LookupError(f"{source}/{service} has no Deployment to copy")
        return deployment, placement

    async def extend(self, name: str, expires: float) -> EphemeralRecord:
        core = k8s.CoreV1Api(self._places.api_client())
        found = self._namespaces_of(name)
        if not found:
            raise LookupError(f"no ephemeral environment {name}")
        written = [await call(core.patch_namespace, obj["metadata"]["name"],
                              expiry_annotations(expires), _content_type=MERGE_PATCH)
                   for obj in found]
        self._places.objects_written(written, [])
        record = record_of(written[0], self._warn)
        if record is None:
            raise LookupError(f"the namespace of {name} no longer holds its record")
        return record

    async def remove(self, name: str) -> None:
        for obj in self._namespaces_of(name):
            await self._delete(obj["metadata"]["name"])

    async def _delete(self, namespace: str) -> None:
        """Delete the namespace; returns once the API server has accepted it."""
        core = k8s.CoreV1Api(self._places.api_client())
        try:
            deleting = await call(core.delete_namespace, namespace)
        except KubeError as exc:
            if exc.status == 404:
                return
            raise
        if deleting.get("kind") == "Namespace":
            self._places.objects_written([deleting], [])
        log.info("deleted the namespace %s", namespace)
