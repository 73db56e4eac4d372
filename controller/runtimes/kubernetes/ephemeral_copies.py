"""The copy of a source environment's Deployment and Service made for an ephemeral one.

Pure functions of the source objects. A copy is what `kubectl get -o yaml`
would show, less what the API server sets (uid, resourceVersion, status, the
Service's cluster IPs, node ports, ...) and less the source's own state
(replicas, last activity, its blue/green steps, kubectl's last-applied
configuration): named after the service alone (an ephemeral environment has
no prefix), at 0 replicas, with the image tag and `wakegate.dev/version` of the
requested version. The source's idle timeout annotation is dropped too: an
ephemeral environment sleeps after its own (the config's `ephemeral:`).
"""

from __future__ import annotations

import copy
from typing import Any

from ...spec import image_tag
from .client import VERSION_ANNOTATION, image_repository
from .colours import (
    DEPLOYED_ANNOTATION,
    LIVE_ANNOTATION,
    LIVE_BY_ANNOTATION,
    LIVE_SINCE_ANNOTATION,
)
from .discovery import ACTIVITY_ANNOTATION, IDLE_TIMEOUT_ANNOTATION

Obj = dict[str, Any]

__all__ = ["deployment_copy", "service_copy"]

# Annotations of the source's own life, not the copy's.
_DROPPED_ANNOTATIONS = (
    ACTIVITY_ANNOTATION, IDLE_TIMEOUT_ANNOTATION, DEPLOYED_ANNOTATION, LIVE_ANNOTATION,
    LIVE_SINCE_ANNOTATION, LIVE_BY_ANNOTATION,
    "deployment.kubernetes.io/revision",
    "kubectl.kubernetes.io/last-applied-configuration",
)
# Server-set, or of a LoadBalancer/NodePort (a copy is ClusterIP, which refuses them).
_SERVICE_SPEC_DROPPED = ("clusterIP", "clusterIPs", "healthCheckNodePort", "loadBalancerIP",
                         "externalIPs", "loadBalancerSourceRanges", "externalTrafficPolicy",
                         "allocateLoadBalancerNodePorts", "loadBalancerClass")


def _metadata(source: Obj, name: str, namespace: str) -> Obj:
    meta = source.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k not in _DROPPED_ANNOTATIONS}
    out: Obj = {"name": name, "namespace": namespace}
    if meta.get("labels"):
        out["labels"] = dict(meta["labels"])
    if annotations:
        out["annotations"] = annotations
    return out


def deployment_copy(source: Obj, name: str, namespace: str, version: str) -> Obj:
    """The source Deployment as `name` in `namespace`, asleep, running `version`."""
    spec = copy.deepcopy(source.get("spec") or {})
    spec["replicas"] = 0
    template = spec.setdefault("template", {})
    template_meta = template.setdefault("metadata", {})
    template_meta.setdefault("annotations", {})[VERSION_ANNOTATION] = version
    containers = template.setdefault("spec", {}).get("containers") or []
    if containers:
        first = containers[0]
        repository = image_repository(first.get("image", ""))
        first["image"] = f"{repository}:{image_tag(version, '')}"
        for variable in first.get("env") or []:
            if variable.get("name") == "WAKEGATE_VERSION":
                variable["value"] = version
                variable.pop("valueFrom", None)
    metadata = _metadata(source, name, namespace)
    metadata.setdefault("annotations", {})[VERSION_ANNOTATION] = version
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata, "spec": spec}


def service_copy(source: Obj, name: str, namespace: str) -> Obj:
    """The source Service as `name` in `namespace`, inside the cluster only."""
    spec = {k: v for k, v in copy.deepcopy(source.get("spec") or {}).items()
            if k not in _SERVICE_SPEC_DROPPED}
    if spec.get("type") in ("NodePort", "LoadBalancer"):
        spec["type"] = "ClusterIP"  # a preview gets no node port or cloud load balancer
    for port in spec.get("ports") or []:
        port.pop("nodePort", None)
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": _metadata(source, name, namespace), "spec": spec}

