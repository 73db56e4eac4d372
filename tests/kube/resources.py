"""The resources the fake serves: where they live in the URL space and how they behave."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import strategies
from .strategies import Strategy

FieldGetter = Callable[[dict[str, Any]], str]


def _path(*keys: str) -> FieldGetter:
    def get(obj: dict[str, Any]) -> str:
        node: Any = obj
        for key in keys:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, bool):
            return "true" if node else "false"
        return "" if node is None else str(node)

    return get


@dataclass(frozen=True, eq=False)
class ResourceType:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    strategy: Strategy
    name_rule: str = "subdomain"
    subresources: frozenset[str] = frozenset()
    short_names: tuple[str, ...] = ()
    # Delete answers with the deleted object rather than a Status (ReturnDeletedObject).
    returns_deleted_object: bool = False
    # Delete only marks the object (deletionTimestamp) and something else removes it later.
    graceful_delete: bool = False
    # Field selectors beyond metadata.name / metadata.namespace; when set, unknown fields get
    # "field label not supported" (the custom conversion funcs) instead of the default message.
    fields: dict[str, FieldGetter] = field(default_factory=dict)
    categories: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def key(self) -> str:
        """How the store names this resource: `apps/deployments`, `/services`."""
        return f"{self.group}/{self.plural}"

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    def field_value(self, obj: dict[str, Any], name: str) -> str:
        meta = obj.get("metadata") or {}
        if name == "metadata.name":
            return str(meta.get("name", ""))
        if name == "metadata.namespace":
            return str(meta.get("namespace", ""))
        return self.fields[name](obj)

    def check_field(self, name: str) -> str | None:
        """The error message for an unsupported field selector, or None if it is supported."""
        if name in ("metadata.name", "metadata.namespace") or name in self.fields:
            return None
        if self.fields:
            return f"field label not supported: {name}"
        return (f'"{name}" is not a known field selector: only "metadata.name", '
                f'"metadata.namespace"')


_POD_FIELDS = {
    "spec.nodeName": _path("spec", "nodeName"),
    "spec.restartPolicy": _path("spec", "restartPolicy"),
    "spec.schedulerName": _path("spec", "schedulerName"),
    "spec.serviceAccountName": _path("spec", "serviceAccountName"),
    "spec.hostNetwork": lambda o: "true" if (o.get("spec") or {}).get("hostNetwork") else "false",
    "status.phase": _path("status", "phase"),
    "status.podIP": _path("status", "podIP"),
    "status.nominatedNodeName": _path("status", "nominatedNodeName"),
}


def _stored(group: str, version: str, plural: str, kind: str, namespaced: bool = True,
            short_names: tuple[str, ...] = ()) -> ResourceType:
    """A kind the manifests use that nothing in the fake acts on."""
    return ResourceType(group, version, plural, kind.lower(), kind, namespaced,
                        strategies.StoredAsGiven(kind), short_names=short_names)


RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "namespace", "Namespace", False,
                 strategies.NamespaceStrategy(), name_rule="label",
                 subresources=frozenset({"status"}), short_names=("ns",),
                 returns_deleted_object=True, graceful_delete=True,
                 fields={"status.phase": _path("status", "phase")}),
    ResourceType("", "v1", "services", "service", "Service", True,
                 strategies.ServiceStrategy(), name_rule="dns1035",
                 subresources=frozenset({"status"}), short_names=("svc",),
                 returns_deleted_object=True, categories=("all",),
                 fields={"spec.clusterIP": _path("spec", "clusterIP"),
                         "spec.type": _path("spec", "type")}),
    ResourceType("", "v1", "secrets", "secret", "Secret", True, strategies.SecretStrategy(),
                 fields={"type": _path("type")}),
    ResourceType("", "v1", "pods", "pod", "Pod", True, strategies.PodStrategy(),
                 subresources=frozenset({"status"}), short_names=("po",),
                 returns_deleted_object=True, graceful_delete=True, categories=("all",),
                 fields=_POD_FIELDS),
    ResourceType("apps", "v1", "deployments", "deployment", "Deployment", True,
                 strategies.DeploymentStrategy(), subresources=frozenset({"status", "scale"}),
                 short_names=("deploy",), categories=("all",)),
    ResourceType("discovery.k8s.io", "v1", "endpointslices", "endpointslice", "EndpointSlice",
                 True, strategies.EndpointSliceStrategy()),
    ResourceType("coordination.k8s.io", "v1", "leases", "lease", "Lease", True,
                 strategies.LeaseStrategy()),
    # The other kinds of manifests/ (the ServiceMonitors as if the Prometheus Operator's
    # CRDs were installed), stored as given: `kubectl apply -k` needs every kind served.
    _stored("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _stored("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _stored("rbac.authorization.k8s.io", "v1", "roles", "Role"),
    _stored("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding"),
    _stored("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _stored("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding",
            False),
    _stored("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget",
            short_names=("pdb",)),
    _stored("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler",
            short_names=("hpa",)),
    _stored("networking.k8s.io", "v1", "ingresses", "Ingress", short_names=("ing",)),
    _stored("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor",
            short_names=("smon",)),
)

BY_PATH: dict[tuple[str, str, str], ResourceType] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}
GROUPS: dict[str, list[str]] = {}
for _r in RESOURCES:
    GROUPS.setdefault(_r.group, [])
    if _r.version not in GROUPS[_r.group]:
        GROUPS[_r.group].append(_r.version)


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    return BY_PATH.get((group, version, plural))


def by_kind(kind: str) -> ResourceType:
    """A resource by its kind (`Deployment`), plural (`deployments`) or singular name."""
    wanted = kind.lower()
    for r in RESOURCES:
        if wanted in (r.kind.lower(), r.plural, r.singular, *r.short_names):
            return r
    raise KeyError(f"the fake API server does not serve {kind!r}")


def by_api_version_kind(api_version: str, kind: str) -> ResourceType | None:
    for r in RESOURCES:
        if r.api_version == api_version and r.kind == kind:
            return r
    return None
