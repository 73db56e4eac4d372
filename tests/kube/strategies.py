"""What each kind does on create and update: defaulting, validation, which parts a verb may change.

This mirrors the REST strategies of kube-apiserver (pkg/registry/*/strategy.go)
for the fields wakegate and its tests touch: a create resets the status, the
main resource cannot change the status and the status subresource cannot change
the spec, `metadata.generation` counts spec changes of Deployments and
EndpointSlices, and defaults are filled in as SetDefaults_* do. Fields this
fake does not know are kept as they are (the real server would drop them).
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import random
import re
from datetime import UTC, datetime
from typing import Any

from . import validation
from .errors import ApiError, FieldError, bad_request
from .selectors import SelectorError, from_label_selector

Obj = dict[str, Any]


def now_time() -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """metav1.MicroTime: RFC 3339 in UTC with microseconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _decode_error(kind: str, detail: str) -> ApiError:
    # What the JSON decoder's failure looks like when the body does not fit the Go type.
    return bad_request(f'{kind} in version "v1" cannot be handled as a {kind}: {detail}')


def _time(kind: str, value: Any, micro: bool) -> str:
    layout = "2006-01-02T15:04:05.000000Z07:00" if micro else "2006-01-02T15:04:05Z07:00"
    if not isinstance(value, str):
        raise _decode_error(kind, f"parsing time {value!r} as {layout!r}: cannot parse")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise _decode_error(
            kind, f'parsing time "{value}" as "{layout}": cannot parse "{value}" as "2006"'
        ) from None
    if parsed.tzinfo is None:
        raise _decode_error(kind, f'parsing time "{value}" as "{layout}": missing time zone')
    parsed = parsed.astimezone(UTC)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _int(kind: str, obj: Any, path: str) -> None:
    """Fail like the decoder if a field meant to be an integer is something else."""
    node: Any = obj
    parts = path.split(".")
    for part in parts[:-1]:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return
    if not isinstance(node, dict) or node.get(parts[-1]) is None:
        return
    value = node[parts[-1]]
    if isinstance(value, bool) or not isinstance(value, int):
        type_name = {str: "string", float: "number", bool: "bool", list: "array",
                     dict: "object"}.get(type(value), "value")
        if isinstance(value, float) and value.is_integer():
            node[parts[-1]] = int(value)
            return
        raise _decode_error(
            kind,
            f"json: cannot unmarshal {type_name} into Go struct field {kind}.{path} of type int32")


def _expand(node: Any, parts: list[str], prefix: str = "") -> list[str]:
    """The concrete paths of a dotted path whose `*` stands for every index of a list."""
    if not parts:
        return [prefix]
    head, rest = parts[0], parts[1:]
    if head == "*":
        items = node if isinstance(node, list) else []
        return [p for i, item in enumerate(items) for p in _expand(item, rest, f"{prefix}.{i}")]
    child = node.get(head) if isinstance(node, dict) else None
    return _expand(child, rest, f"{prefix}.{head}" if prefix else head)


def _map(kind: str, obj: Obj, *keys: str) -> None:
    for key in keys:
        if obj.get(key) is not None and not isinstance(obj[key], dict):
            raise _decode_error(
                kind, f"json: cannot unmarshal into Go struct field {kind}.{key} of type object")


class Strategy:
    """The defaults: no status, no generation."""

    kind = ""
    has_status = False
    has_generation = False
    # The top-level fields a status update may change; everything else is kept.
    status_fields: tuple[str, ...] = ("status",)
    # The top-level fields whose change bumps metadata.generation.
    spec_fields: tuple[str, ...] = ("spec",)
    # A PUT of a missing object creates it (only Leases, of the kinds served here).
    allow_create_on_update = False
    # A PUT without metadata.resourceVersion overwrites whatever is stored.
    allow_unconditional_update = True
    # Dotted paths of int32 fields the decoder checks (`*`: every item of a list).
    int_fields: tuple[str, ...] = ()
    # Dotted paths of fields an update may not change.
    immutable_fields: tuple[str, ...] = ()

    def decode(self, obj: Obj) -> None:
        """Type checks the real decoder does before anything else (400 on failure)."""
        _map(self.kind, obj, "spec", "status")
        for pattern in self.int_fields:
            for path in _expand(obj, pattern.split(".")):
                _int(self.kind, obj, path)

    def prepare_create(self, obj: Obj) -> None:
        if self.has_status:
            obj["status"] = self.initial_status(obj)
        if self.has_generation:
            obj["metadata"]["generation"] = 1
        self.default(obj)

    def initial_status(self, obj: Obj) -> Obj:
        return {}

    def prepare_update(self, new: Obj, old: Obj) -> None:
        if self.has_status:
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        self.default(new)
        if self.has_generation:
            changed = any(new.get(f) != old.get(f) for f in self.spec_fields)
            generation = old["metadata"].get("generation", 1)
            new["metadata"]["generation"] = generation + 1 if changed else generation

    def prepare_status_update(self, new: Obj, old: Obj) -> None:
        status = {f: copy.deepcopy(new[f]) for f in self.status_fields if f in new}
        meta = new["metadata"]
        kept = copy.deepcopy(old)
        for f in self.status_fields:
            kept.pop(f, None)
        kept.update(status)
        # A status write may still change annotations, as the real strategies allow.
        if "annotations" in meta:
            kept["metadata"]["annotations"] = meta["annotations"]
        else:
            kept["metadata"].pop("annotations", None)
        new.clear()
        new.update(kept)

    def default(self, obj: Obj) -> None:
        pass

    def validate(self, obj: Obj) -> list[FieldError]:
        return []

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        out = self.validate(new)
        for path in self.immutable_fields:
            value = _value_at(new, path)
            if value != _value_at(old, path):
                out.append(FieldError("FieldValueInvalid", path, value, "field is immutable"))
        return out


def _value_at(obj: Obj, path: str) -> Any:
    node: Any = obj
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


class StoredAsGiven(Strategy):
    """A kind nothing in the fake acts on (RBAC, ConfigMaps, Ingresses...): stored as sent,
    so that `kubectl apply` of the manifests finds every kind it names."""

    def __init__(self, kind: str) -> None:
        self.kind = kind


# --- pods and pod templates ---

def _image_pull_policy(image: str) -> str:
    name = image.rsplit("/", 1)[-1]
    if "@" in name:
        return "IfNotPresent"
    tag = name.split(":", 1)[1] if ":" in name else ""
    return "Always" if tag in ("", "latest") else "IfNotPresent"


def _default_probe(probe: Any) -> None:
    if not isinstance(probe, dict):
        return
    for key, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1),
                       ("failureThreshold", 3)):
        probe.setdefault(key, value)
    if isinstance(probe.get("httpGet"), dict):
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def default_pod_spec(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    for key in ("containers", "initContainers"):
        for c in spec.get(key) or []:
            if not isinstance(c, dict):
                continue
            c.setdefault("resources", {})
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            if isinstance(c.get("image"), str):
                c.setdefault("imagePullPolicy", _image_pull_policy(c["image"]))
            for port in c.get("ports") or []:
                if isinstance(port, dict):
                    port.setdefault("protocol", "TCP")
            for env in c.get("env") or []:
                ref = env.get("valueFrom", {}).get("fieldRef") if isinstance(env, dict) else None
                if isinstance(ref, dict):
                    ref.setdefault("apiVersion", "v1")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                _default_probe(c.get(probe))


def validate_pod_spec(spec: Any, path: str, template: bool) -> list[FieldError]:
    out: list[FieldError] = []
    if not isinstance(spec, dict):
        return [FieldError("FieldValueRequired", path)]
    containers = spec.get("containers")
    if not containers:
        out.append(FieldError("FieldValueRequired", f"{path}.containers"))
    names: set[str] = set()
    for i, c in enumerate(containers or []):
        cpath = f"{path}.containers[{i}]"
        if not isinstance(c, dict):
            out.append(FieldError("FieldValueInvalid", cpath, c, "must be an object"))
            continue
        name = c.get("name") or ""
        if not name:
            out.append(FieldError("FieldValueRequired", f"{cpath}.name"))
        else:
            out += [FieldError("FieldValueInvalid", f"{cpath}.name", name, e)
                    for e in validation.dns1123_label(name)]
            if name in names:
                out.append(FieldError("FieldValueDuplicate", f"{cpath}.name", name))
            names.add(name)
        if not c.get("image"):
            out.append(FieldError("FieldValueRequired", f"{cpath}.image"))
        for j, port in enumerate(c.get("ports") or []):
            value = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(value, int) or not 0 < value < 65536:
                out.append(FieldError("FieldValueInvalid", f"{cpath}.ports[{j}].containerPort",
                                      value, "must be between 1 and 65535, inclusive"))
        for j, env in enumerate(c.get("env") or []):
            if not isinstance(env, dict) or not env.get("name"):
                out.append(FieldError("FieldValueRequired", f"{cpath}.env[{j}].name"))
    policy = spec.get("restartPolicy")
    if template and policy != "Always":
        out.append(FieldError("FieldValueNotSupported", f"{path}.restartPolicy", policy,
                              'supported values: "Always"'))
    elif policy not in ("Always", "OnFailure", "Never"):
        out.append(FieldError("FieldValueNotSupported", f"{path}.restartPolicy", policy,
                              'supported values: "Always", "OnFailure", "Never"'))
    return out


class PodStrategy(Strategy):
    kind = "Pod"
    has_status = True
    int_fields = ("spec.containers.*.ports.*.containerPort",)

    def initial_status(self, obj: Obj) -> Obj:
        return {"phase": "Pending", "qosClass": "BestEffort"}

    def default(self, obj: Obj) -> None:
        default_pod_spec(obj.setdefault("spec", {}))

    def validate(self, obj: Obj) -> list[FieldError]:
        return validate_pod_spec(obj.get("spec"), "spec", template=False)

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        out = self.validate(new)
        # Only container images may change (ValidatePodUpdate).
        mutable_new = copy.deepcopy(new.get("spec") or {})
        mutable_old = copy.deepcopy(old.get("spec") or {})
        for spec in (mutable_new, mutable_old):
            for c in spec.get("containers") or []:
                c.pop("image", None)
        if mutable_new != mutable_old:
            out.append(FieldError(
                "FieldValueForbidden", "spec", None,
                "pod updates may not change fields other than `spec.containers[*].image`, "
                "`spec.initContainers[*].image`, `spec.activeDeadlineSeconds`, "
                "`spec.tolerations` (only additions to existing tolerations), "
                "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was "
                "previously negative)"))
        return out


class DeploymentStrategy(Strategy):
    kind = "Deployment"
    has_status = True
    has_generation = True
    int_fields = ("spec.replicas", "spec.revisionHistoryLimit", "spec.minReadySeconds",
                  "spec.progressDeadlineSeconds")
    immutable_fields = ("spec.selector",)

    def default(self, obj: Obj) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("replicas", 1)
        strategy = spec.setdefault("strategy", {})
        strategy.setdefault("type", "RollingUpdate")
        if strategy["type"] == "RollingUpdate":
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxUnavailable", "25%")
            rolling.setdefault("maxSurge", "25%")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        template = spec.get("template")
        if isinstance(template, dict):
            default_pod_spec(template.setdefault("spec", {}))

    def validate(self, obj: Obj) -> list[FieldError]:
        out: list[FieldError] = []
        spec = obj.get("spec") or {}
        replicas = spec.get("replicas")
        if isinstance(replicas, int) and replicas < 0:
            out.append(FieldError("FieldValueInvalid", "spec.replicas", replicas,
                                  "must be greater than or equal to 0"))
        selector = spec.get("selector")
        template = spec.get("template") if isinstance(spec.get("template"), dict) else {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if selector is None:
            out.append(FieldError("FieldValueRequired", "spec.selector"))
        else:
            try:
                sel = from_label_selector(selector)
            except (SelectorError, KeyError, AttributeError) as e:
                out.append(FieldError("FieldValueInvalid", "spec.selector", selector, str(e)))
            else:
                if sel.empty:
                    out.append(FieldError("FieldValueInvalid", "spec.selector", selector,
                                          "empty selector is invalid for deployment"))
                elif not sel.matches(labels):
                    out.append(FieldError("FieldValueInvalid", "spec.template.metadata.labels",
                                          labels, "`selector` does not match template `labels`"))
        out += validation.labels(labels, "spec.template.metadata.labels")
        if not template:
            out.append(FieldError("FieldValueRequired", "spec.template"))
        else:
            out += validate_pod_spec(template.get("spec"), "spec.template.spec", template=True)
        kind = (spec.get("strategy") or {}).get("type")
        if kind not in ("RollingUpdate", "Recreate"):
            out.append(FieldError("FieldValueNotSupported", "spec.strategy.type", kind,
                                  'supported values: "Recreate", "RollingUpdate"'))
        return out

    def prepare_status_update(self, new: Obj, old: Obj) -> None:
        super().prepare_status_update(new, old)
        new["metadata"]["labels"] = copy.deepcopy(old["metadata"].get("labels"))
        if new["metadata"]["labels"] is None:
            del new["metadata"]["labels"]


class NamespaceStrategy(Strategy):
    kind = "Namespace"
    has_status = True

    def initial_status(self, obj: Obj) -> Obj:
        return {"phase": "Active"}

    def prepare_create(self, obj: Obj) -> None:
        super().prepare_create(obj)
        obj["spec"] = {"finalizers": ["kubernetes"]}
        self._label(obj)

    def prepare_update(self, new: Obj, old: Obj) -> None:
        super().prepare_update(new, old)
        # Finalizers of the spec change only through the finalize subresource.
        new["spec"] = copy.deepcopy(old.get("spec", {}))
        self._label(new)

    @staticmethod
    def _label(obj: Obj) -> None:
        # Every namespace carries its own name as a label (since 1.21), so selectors can use it.
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]


_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class SecretStrategy(Strategy):
    kind = "Secret"
    immutable_fields = ("type",)

    def decode(self, obj: Obj) -> None:
        _map(self.kind, obj, "data", "stringData")
        for value in (obj.get("data") or {}).values():
            if not isinstance(value, str):
                raise _decode_error(self.kind, "json: cannot unmarshal into []byte")
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise _decode_error(
                    self.kind, f"illegal base64 data at input byte {_bad_byte(value)}"
                ) from None
        # stringData is write-only: the conversion folds it into data.
        string_data = obj.pop("stringData", None)
        if string_data:
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()

    def default(self, obj: Obj) -> None:
        obj.setdefault("type", "Opaque")

    def validate(self, obj: Obj) -> list[FieldError]:
        out = []
        total = 0
        for key, value in (obj.get("data") or {}).items():
            if not _CONFIG_KEY.match(key):
                out.append(FieldError(
                    "FieldValueInvalid", "data", key,
                    "a valid config key must consist of alphanumeric characters, '-', '_' or "
                    "'.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for "
                    "validation is '[-._a-zA-Z0-9]+')"))
            total += len(value) * 3 // 4
        if total > 1024 * 1024:
            out.append(FieldError("FieldValueTooLong", "data", "",
                                  "Too long: may not be more than 1048576 bytes"))
        return out

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        out = super().validate_update(new, old)
        if old.get("immutable"):
            if new.get("data") != old.get("data"):
                out.append(FieldError("FieldValueForbidden", "data", None,
                                      "field is immutable when `immutable` is set"))
            if not new.get("immutable"):
                out.append(FieldError("FieldValueForbidden", "immutable", None,
                                      "field is immutable when `immutable` is set"))
        return out


def _bad_byte(value: str) -> int:
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    for i, ch in enumerate(value):
        if ch not in alphabet:
            return i
    return len(value) - len(value) % 4


class ServiceStrategy(Strategy):
    kind = "Service"
    has_status = True
    int_fields = ("spec.ports.*.port",)

    def initial_status(self, obj: Obj) -> Obj:
        return {"loadBalancer": {}}

    def default(self, obj: Obj) -> None:
        spec = obj.setdefault("spec", {})
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            if not spec.get("clusterIP"):
                # A cluster IP is only a field here; nothing ever connects to it.
                spec["clusterIP"] = f"10.96.{random.randint(0, 255)}.{random.randint(1, 254)}"
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
            spec.setdefault("ipFamilies", ["IPv4"])
            spec.setdefault("ipFamilyPolicy", "SingleStack")
            spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            if isinstance(port, dict):
                port.setdefault("protocol", "TCP")
                if "port" in port:
                    port.setdefault("targetPort", port["port"])

    def prepare_update(self, new: Obj, old: Obj) -> None:
        # An update that leaves the allocated cluster IP out keeps it (patchAllocatedValues).
        spec, old_spec = new.setdefault("spec", {}), old.get("spec", {})
        for key in ("clusterIP", "clusterIPs"):
            if not spec.get(key) and old_spec.get(key):
                spec[key] = copy.deepcopy(old_spec[key])
        super().prepare_update(new, old)

    def validate(self, obj: Obj) -> list[FieldError]:
        out: list[FieldError] = []
        spec = obj.get("spec") or {}
        ports = spec.get("ports") or []
        if not ports and spec.get("clusterIP") != "None" and spec.get("type") != "ExternalName":
            out.append(FieldError("FieldValueRequired", "spec.ports"))
        names: set[str] = set()
        for i, port in enumerate(ports):
            path = f"spec.ports[{i}]"
            name = port.get("name") or ""
            if len(ports) > 1 and not name:
                out.append(FieldError("FieldValueRequired", f"{path}.name"))
            elif name:
                if name in names:
                    out.append(FieldError("FieldValueDuplicate", f"{path}.name", name))
                names.add(name)
            number = port.get("port")
            if not isinstance(number, int) or not 0 < number < 65536:
                out.append(FieldError("FieldValueInvalid", f"{path}.port", number,
                                      "must be between 1 and 65535, inclusive"))
            if port.get("protocol") not in ("TCP", "UDP", "SCTP"):
                out.append(FieldError("FieldValueNotSupported", f"{path}.protocol",
                                      port.get("protocol"),
                                      'supported values: "SCTP", "TCP", "UDP"'))
            target = port.get("targetPort")
            if isinstance(target, int) and not 0 < target < 65536:
                out.append(FieldError("FieldValueInvalid", f"{path}.targetPort", target,
                                      "must be between 1 and 65535, inclusive"))
        if spec.get("selector") is not None:
            out += validation.labels(spec["selector"], "spec.selector")
        if spec.get("type") not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            out.append(FieldError("FieldValueNotSupported", "spec.type", spec.get("type"),
                                  'supported values: "ClusterIP", "ExternalName", '
                                  '"LoadBalancer", "NodePort"'))
        ip = spec.get("clusterIP")
        if ip and ip != "None":
            try:
                ipaddress.ip_address(ip)
            except ValueError:
                out.append(FieldError(
                    "FieldValueInvalid", "spec.clusterIPs[0]", ip,
                    "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"))
        return out

    def validate_update(self, new: Obj, old: Obj) -> list[FieldError]:
        out = self.validate(new)
        new_ip = (new.get("spec") or {}).get("clusterIP")
        old_ip = (old.get("spec") or {}).get("clusterIP")
        if old_ip and new_ip != old_ip:
            out.append(FieldError("FieldValueInvalid", "spec.clusterIPs[0]", new_ip,
                                  "may not change once set"))
        return out


class LeaseStrategy(Strategy):
    kind = "Lease"
    allow_create_on_update = True
    allow_unconditional_update = False
    int_fields = ("spec.leaseDurationSeconds", "spec.leaseTransitions")

    def decode(self, obj: Obj) -> None:
        super().decode(obj)
        spec = obj.get("spec") or {}
        for key in ("acquireTime", "renewTime"):
            if spec.get(key) is not None:
                spec[key] = _time(self.kind, spec[key], micro=True)

    # (field, smallest value allowed, the message when it is smaller)
    _LOWER_BOUNDS = (("leaseDurationSeconds", 1, "must be greater than 0"),
                     ("leaseTransitions", 0, "must be greater than or equal to 0"))

    def validate(self, obj: Obj) -> list[FieldError]:
        spec = obj.get("spec") or {}
        return [FieldError("FieldValueInvalid", f"spec.{field}", spec[field], message)
                for field, least, message in self._LOWER_BOUNDS
                if spec.get(field) is not None and spec[field] < least]


class EndpointSliceStrategy(Strategy):
    kind = "EndpointSlice"
    has_generation = True
    spec_fields = ("endpoints", "ports", "addressType")
    immutable_fields = ("addressType",)

    def validate(self, obj: Obj) -> list[FieldError]:
        out: list[FieldError] = []
        kind = obj.get("addressType")
        if not kind:
            out.append(FieldError("FieldValueRequired", "addressType"))
        elif kind not in ("IPv4", "IPv6", "FQDN"):
            out.append(FieldError("FieldValueNotSupported", "addressType", kind,
                                  'supported values: "FQDN", "IPv4", "IPv6"'))
        for i, ep in enumerate(obj.get("endpoints") or []):
            addresses = ep.get("addresses") if isinstance(ep, dict) else None
            if not addresses:
                out.append(FieldError("FieldValueRequired", f"endpoints[{i}].addresses",
                                      None, "must contain at least 1 address"))
            elif len(addresses) > 100:
                out.append(FieldError("FieldValueTooMany", f"endpoints[{i}].addresses",
                                      len(addresses), "must have at most 100 items"))
        return out


# The Scale of a Deployment is computed, not stored; only its validation lives here.
def validate_scale(scale: Obj) -> list[FieldError]:
    replicas = (scale.get("spec") or {}).get("replicas", 0)
    if not isinstance(replicas, int) or replicas < 0:
        return [FieldError("FieldValueInvalid", "spec.replicas", replicas,
                           "must be greater than or equal to 0")]
    return []
