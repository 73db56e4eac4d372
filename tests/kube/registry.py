"""REST semantics of the generic registry: get, list, create, update, patch, delete, scale.

The HTTP layer and the simulated controllers both go through here, so an
object written by the fake kubelet is validated, versioned and seen by watches
exactly like one written by a client. Errors are raised as ApiError.
"""

from __future__ import annotations

import base64
import copy
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from . import errors, patch, validation
from .errors import ApiError, FieldError
from .resources import ResourceType, by_kind
from .selectors import EVERYTHING, FieldSelector, LabelSelector, from_label_selector
from .store import Store, key_text
from .strategies import now_time, validate_scale

Obj = dict[str, Any]

# names.SimpleNameGenerator: five characters from an alphabet without vowels or look-alikes.
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# How long a list or watch waits for a resourceVersion the store has not reached yet.
TOO_LARGE_RV_WAIT = 3.0

JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_PATCH]

CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def random_suffix(n: int = 5) -> str:
    return "".join(random.choice(_NAME_ALPHABET) for _ in range(n))


def strip_type(obj: Obj) -> Obj:
    """List items carry no apiVersion/kind on the wire, as the real server encodes them."""
    return {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}


def parse_rv(value: str) -> int:
    """A resourceVersion from a client; they are opaque strings, but ours are all numbers."""
    if not value.isdigit():
        raise errors.bad_request(f'invalid resource version "{value}"')
    return int(value)


def scale_of(dep: Obj) -> Obj:
    """The autoscaling/v1 Scale view of a Deployment (scaleFromDeployment)."""
    meta = dep["metadata"]
    replicas = (dep.get("spec") or {}).get("replicas")
    spec = {"replicas": replicas} if replicas else {}  # ScaleSpec.replicas is omitempty
    status: Obj = {"replicas": (dep.get("status") or {}).get("replicas", 0)}
    selector = str(from_label_selector((dep.get("spec") or {}).get("selector")))
    if selector:
        status["selector"] = selector
    return {
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion",
                                          "creationTimestamp") if k in meta},
        "spec": spec,
        "status": status,
    }


class Registry:
    def __init__(self, store: Store) -> None:
        self.store = store

    # --- helpers ---

    def existing(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        return self.store.get(rt.key, (namespace or "") if rt.namespaced else "", name)

    def _require(self, rt: ResourceType, namespace: str | None, name: str,
                 resource: str | None = None) -> Obj:
        found = self.existing(rt, namespace, name)
        if found is None:
            raise errors.not_found(rt.group, resource or rt.plural, name)
        return found

    @staticmethod
    def _decode(rt: ResourceType, body: Any, api_version: str | None = None,
                kind: str | None = None) -> Obj:
        """Check the body against the type the path names; a deep copy to work on."""
        api_version = api_version or rt.api_version
        kind = kind or rt.kind
        if not isinstance(body, dict):
            raise errors.bad_request(
                f"json: cannot unmarshal {type(body).__name__} into Go value of type {kind}")
        got_version, got_kind = body.get("apiVersion"), body.get("kind")
        if got_version and got_version != api_version:
            raise errors.bad_request(
                f"the API version in the data ({got_version}) does not match the expected API "
                f"version ({api_version})")
        if got_kind and got_kind != kind:
            raise errors.bad_request(
                f'no kind "{got_kind}" is registered for version "{api_version}" in scheme '
                f'"pkg/api/legacyscheme/scheme.go:30"')
        obj = copy.deepcopy(body)
        obj["apiVersion"], obj["kind"] = api_version, kind
        # Keep apiVersion and kind first, as the real encoder writes them.
        obj = {"kind": kind, "apiVersion": api_version,
               **{k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}}
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.bad_request(
                f"json: cannot unmarshal into Go struct field {kind}.metadata of type "
                "v1.ObjectMeta")
        return obj

    @staticmethod
    def _place(rt: ResourceType, namespace: str | None, meta: Obj) -> None:
        if rt.namespaced:
            given = meta.get("namespace")
            if given and given != namespace:
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)

    def _check_namespace(self, rt: ResourceType, namespace: str, name: str) -> None:
        """The NamespaceLifecycle admission plugin: the namespace must exist and be active."""
        ns = self.store.get("/namespaces", "", namespace)
        if ns is None:
            raise errors.not_found("", "namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                rt.group, rt.plural, name,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
                causes=[{"reason": "NamespaceTerminating", "field": "metadata.namespace",
                         "message": f"namespace {namespace} is being terminated"}])

    # --- reads ---

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        return self._require(rt, namespace, name)

    def select(self, rt: ResourceType, items: list[Obj], labels: LabelSelector,
               fields: FieldSelector) -> list[Obj]:
        return [o for o in items
                if labels.matches((o.get("metadata") or {}).get("labels"))
                and fields.matches(lambda f, o=o: rt.field_value(o, f))]

    async def list(self, rt: ResourceType, namespace: str | None, *,
                   labels: LabelSelector = EVERYTHING, fields: FieldSelector | None = None,
                   resource_version: str = "", match: str = "", limit: int = 0,
                   continue_token: str = "") -> Obj:
        fields = fields or FieldSelector()
        start = ""
        if continue_token:
            if resource_version:
                raise errors.bad_request(
                    "specifying resource version is not allowed when using continue")
            list_rv, start = _decode_continue(continue_token)
            items = self.store.snapshot(rt.key, namespace, list_rv)
            if items is None:
                raise errors.expired(CONTINUE_EXPIRED)
        else:
            _check_match(resource_version, match)
            if resource_version and resource_version != "0":
                wanted = parse_rv(resource_version)
                if wanted > self.store.rv and not await self.store.wait_for(
                        wanted, TOO_LARGE_RV_WAIT):
                    raise errors.too_large_resource_version(wanted, self.store.rv)
                if match == "Exact":
                    snap = self.store.snapshot(rt.key, namespace, wanted)
                    if snap is None:
                        raise errors.expired(
                            f"too old resource version: {wanted} ({self.store.floor})")
                    items, list_rv = snap, wanted
                else:
                    items, list_rv = self.store.items(rt.key, namespace), self.store.rv
            else:
                items, list_rv = self.store.items(rt.key, namespace), self.store.rv
        items = self.select(rt, items, labels, fields)
        if start:
            items = [o for o in items if _item_key(o) >= start]
        meta: Obj = {"resourceVersion": str(list_rv)}
        if limit and len(items) > limit:
            rest = len(items) - limit
            items = items[:limit]
            meta["continue"] = _encode_continue(list_rv, _item_key(items[-1]) + "\x00")
            if labels.empty and not fields.terms:
                meta["remainingItemCount"] = rest
        return {"kind": rt.list_kind, "apiVersion": rt.api_version, "metadata": meta,
                "items": [strip_type(o) for o in items]}

    # --- create ---

    def create(self, rt: ResourceType, namespace: str | None, body: Any, *,
               dry_run: bool = False) -> Obj:
        obj = self._decode(rt, body)
        rt.strategy.decode(obj)
        meta = obj["metadata"]
        self._place(rt, namespace, meta)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + random_suffix()
        name = meta.get("name") or ""
        if rt.namespaced and namespace:
            self._check_namespace(rt, namespace, name)
        if meta.get("resourceVersion"):
            # storage.ErrResourceVersionSetOnCreate is a plain error: 500 with no reason.
            raise ApiError(500, "", "resourceVersion should not be set on objects to be created")
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_time()
        for system in ("deletionTimestamp", "deletionGracePeriodSeconds", "managedFields",
                       "generation", "selfLink"):
            meta.pop(system, None)
        rt.strategy.prepare_create(obj)
        problems = validation.object_meta(meta, rt.name_rule) + rt.strategy.validate(obj)
        if problems:
            raise errors.invalid(rt.group, rt.kind, name, problems)
        if self.existing(rt, namespace, name) is not None:
            raise errors.already_exists(rt.group, rt.plural, name)
        if dry_run:
            return obj
        return self.store.put(rt.key, obj).obj

    # --- update and patch ---

    def update(self, rt: ResourceType, namespace: str | None, name: str, body: Any, *,
               subresource: str = "", dry_run: bool = False) -> tuple[Obj, bool]:
        """PUT; the bool says whether the object was created (201) rather than updated."""
        obj = self._decode(rt, body)
        rt.strategy.decode(obj)
        meta = obj["metadata"]
        self._place(rt, namespace, meta)
        if meta.get("name", "") != name:
            raise errors.bad_request(f"the name of the object ({meta.get('name', '')}) does not "
                                     f"match the name on the URL ({name})")
        old = self.existing(rt, namespace, name)
        if old is None:
            if rt.strategy.allow_create_on_update and not subresource:
                meta.pop("resourceVersion", None)
                return self.create(rt, namespace, obj, dry_run=dry_run), True
            raise errors.not_found(rt.group, rt.plural, name)
        return self.replace(rt, old, obj, subresource=subresource, dry_run=dry_run), False

    def replace(self, rt: ResourceType, old: Obj, new: Obj, *, subresource: str = "",
                dry_run: bool = False, conflict_resource: str | None = None) -> Obj:
        """Store `new` over `old` as the generic registry's Update does."""
        meta = new["metadata"]
        old_meta = old["metadata"]
        name = old_meta["name"]
        rv = str(meta.get("resourceVersion") or "")
        if rv:
            if parse_rv(rv) != int(old_meta["resourceVersion"]):
                raise errors.conflict(rt.group, conflict_resource or rt.plural, name)
        elif not rt.strategy.allow_unconditional_update:
            raise errors.invalid(rt.group, rt.plural, name, [FieldError(
                "FieldValueInvalid", "metadata.resourceVersion", 0,
                "must be specified for an update")])
        uid = meta.get("uid")
        if uid and uid != old_meta["uid"]:
            raise errors.conflict(
                rt.group, conflict_resource or rt.plural, name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{old_meta['uid']}")
        for system in ("uid", "creationTimestamp", "deletionTimestamp",
                       "deletionGracePeriodSeconds", "generation"):
            if system in old_meta:
                meta[system] = old_meta[system]
            else:
                meta.pop(system, None)
        meta.pop("managedFields", None)
        meta.pop("selfLink", None)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if subresource == "status":
            rt.strategy.prepare_status_update(new, old)
        else:
            rt.strategy.prepare_update(new, old)
        problems = validation.object_meta(new["metadata"], rt.name_rule)
        problems += rt.strategy.validate_update(new, old)
        if old_meta.get("deletionTimestamp"):
            added = set(new["metadata"].get("finalizers") or []) - set(
                old_meta.get("finalizers") or [])
            if added:
                problems.append(FieldError("FieldValueForbidden", "metadata.finalizers",
                                           None, "no new finalizers can be added if the object "
                                           "is being deleted, found new finalizers "
                                           f"{json.dumps(sorted(added))}"))
        if problems:
            raise errors.invalid(rt.group, rt.kind, name, problems)
        if new == old:
            # etcd is not written when nothing changed: same object, same resourceVersion.
            return old
        if dry_run:
            return new
        if (old_meta.get("deletionTimestamp") and old_meta.get("finalizers")
                and not new["metadata"].get("finalizers") and not rt.graceful_delete):
            # The last finalizer is gone from an object being deleted: now it goes.
            self.store.put(rt.key, new)
            return self.store.remove(rt.key, old_meta.get("namespace", ""), name).obj
        return self.store.put(rt.key, new).obj

    def patch(self, rt: ResourceType, namespace: str | None, name: str, content_type: str,
              raw: bytes, *, subresource: str = "", dry_run: bool = False) -> Obj:
        old = self._require(rt, namespace, name)
        patched = self._decode(rt, apply_patch(rt.kind, content_type, raw, old))
        rt.strategy.decode(patched)
        meta = patched["metadata"]
        if meta.get("name") != name:
            raise errors.bad_request(f"the name of the object ({meta.get('name', '')}) does not "
                                     f"match the name on the URL ({name})")
        self._place(rt, namespace, meta)
        return self.replace(rt, old, patched, subresource=subresource, dry_run=dry_run)

    def mutate(self, rt: ResourceType, namespace: str | None, name: str,
               change: Callable[[Obj], None], *, subresource: str = "") -> Obj:
        """Read, change and write back an object (what a controller's update does)."""
        old = self._require(rt, namespace, name)
        new = copy.deepcopy(old)
        change(new)
        return self.replace(rt, old, new, subresource=subresource)

    # --- scale ---

    def get_scale(self, namespace: str, name: str) -> Obj:
        return scale_of(self._require(by_kind("Deployment"), namespace, name))

    def update_scale(self, namespace: str, name: str, body: Any, *,
                     dry_run: bool = False) -> Obj:
        rt = by_kind("Deployment")
        scale = self._decode(rt, body, "autoscaling/v1", "Scale")
        if scale["metadata"].get("name", "") != name:
            raise errors.bad_request(
                f"the name of the object ({scale['metadata'].get('name', '')}) does not match "
                f"the name on the URL ({name})")
        self._place(rt, namespace, scale["metadata"])
        # The registry reads the Deployment inside the update, so a missing one is reported
        # for the subresource.
        dep = self._require(rt, namespace, name, resource="deployments/scale")
        problems = validate_scale(scale)
        if problems:
            raise errors.invalid("autoscaling", "Scale", name, problems)
        uid = scale["metadata"].get("uid")
        if uid and uid != dep["metadata"]["uid"]:
            raise errors.conflict(
                "apps", "deployments/scale", name,
                f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                f"{dep['metadata']['uid']}")
        new = copy.deepcopy(dep)
        new["spec"]["replicas"] = (scale.get("spec") or {}).get("replicas", 0)
        new["metadata"]["resourceVersion"] = scale["metadata"].get("resourceVersion", "")
        return scale_of(self.replace(rt, dep, new, dry_run=dry_run))

    def patch_scale(self, namespace: str, name: str, content_type: str, raw: bytes, *,
                    dry_run: bool = False) -> Obj:
        rt = by_kind("Deployment")
        dep = self._require(rt, namespace, name, resource="deployments/scale")
        patched = apply_patch("Scale", content_type, raw, scale_of(dep))
        return self.update_scale(namespace, name, patched, dry_run=dry_run)

    # --- delete ---

    def delete(self, rt: ResourceType, namespace: str | None, name: str,
               options: Obj | None = None, *, dry_run: bool = False) -> Obj:
        """DELETE; the answer is the object (if the kind returns it or it lingers) or a Status."""
        options = options or {}
        old = self._require(rt, namespace, name)
        meta = old["metadata"]
        pre = options.get("preconditions") or {}
        if pre.get("uid") and pre["uid"] != meta["uid"]:
            raise errors.conflict(
                rt.group, rt.plural, name,
                f"Precondition failed: UID in precondition: {pre['uid']}, UID in object meta: "
                f"{meta['uid']}")
        if pre.get("resourceVersion") and pre["resourceVersion"] != meta["resourceVersion"]:
            raise errors.conflict(
                rt.group, rt.plural, name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                f"{meta['resourceVersion']}")
        lingering = self._deletion_mark(rt, old, options)
        if lingering is not None:
            if dry_run or lingering == old:
                return lingering
            return self.store.put(rt.key, lingering).obj
        if not dry_run:
            self.store.remove(rt.key, meta.get("namespace", ""), name)
        if rt.returns_deleted_object:
            return old
        details: Obj = {"name": name}
        if rt.group:
            details["group"] = rt.group
        details["kind"] = rt.plural
        details["uid"] = meta["uid"]
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details}

    def _deletion_mark(self, rt: ResourceType, old: Obj, options: Obj) -> Obj | None:
        """The object marked for deletion if it must linger (graceful or finalizers), or None."""
        meta = old["metadata"]
        marked = copy.deepcopy(old)
        now = datetime.now(UTC)
        if rt.kind == "Namespace":
            # The namespace controller empties it and then removes it.
            if not meta.get("deletionTimestamp"):
                marked["metadata"]["deletionTimestamp"] = now_time()
                marked["status"] = {**(marked.get("status") or {}), "phase": "Terminating"}
            return marked
        if rt.graceful_delete:
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = (old.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
            if grace <= 0 and not meta.get("finalizers"):
                return None  # a forced delete removes the object at once
            current = meta.get("deletionGracePeriodSeconds")
            if current is not None and current <= grace:
                return old  # already going, no sooner than that
            marked["metadata"]["deletionTimestamp"] = (now + timedelta(seconds=grace)).strftime(
                "%Y-%m-%dT%H:%M:%SZ")
            marked["metadata"]["deletionGracePeriodSeconds"] = grace
            return marked
        if meta.get("finalizers"):
            if not meta.get("deletionTimestamp"):
                marked["metadata"]["deletionTimestamp"] = now_time()
                marked["metadata"]["deletionGracePeriodSeconds"] = 0
            return marked
        return None

    def delete_collection(self, rt: ResourceType, namespace: str | None, *,
                          labels: LabelSelector, fields: FieldSelector,
                          options: Obj | None = None, dry_run: bool = False) -> Obj:
        doomed = self.select(rt, self.store.items(rt.key, namespace), labels, fields)
        gone = []
        for obj in doomed:
            meta = obj["metadata"]
            try:
                result = self.delete(rt, meta.get("namespace"), meta["name"], options,
                                     dry_run=dry_run)
            except ApiError as e:
                if e.code == 404:
                    continue
                raise
            gone.append(obj if result.get("kind") == "Status" else result)
        return {"kind": rt.list_kind, "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": [strip_type(o) for o in gone]}


def apply_patch(kind: str, content_type: str, raw: bytes, current: Obj) -> Any:
    """Apply a PATCH body of the given media type to `current`; ApiError when it cannot be."""
    if content_type not in PATCH_TYPES:
        raise errors.unsupported_media_type(content_type, PATCH_TYPES)
    try:
        document = json.loads(raw or b"null")
    except ValueError as e:
        raise errors.bad_request(f"error decoding patch: {e}") from None
    try:
        if content_type == JSON_PATCH:
            return patch.json_patch(current, document)
        if not isinstance(document, dict):
            raise patch.PatchError(
                "json: cannot unmarshal array into Go value of type map[string]interface {}", 400)
        if content_type == MERGE_PATCH:
            return patch.merge_patch(current, document)
        return patch.strategic_merge_patch(current, document, patch.schema_for(kind))
    except patch.PatchError as e:
        if e.code == 400:
            raise errors.bad_request(str(e)) from None
        raise ApiError(422, "Invalid", str(e),
                       {"causes": [{"reason": "UnexpectedServerResponse", "message": str(e)}]}
                       ) from None


def _check_match(resource_version: str, match: str) -> None:
    if not match:
        return
    problems = []
    if match not in ("Exact", "NotOlderThan"):
        problems.append(FieldError("FieldValueNotSupported", "resourceVersionMatch", match,
                                   'supported values: "Exact", "NotOlderThan"'))
    elif not resource_version:
        problems.append(FieldError("FieldValueForbidden", "resourceVersionMatch", None,
                                   "resourceVersionMatch is forbidden unless resourceVersion "
                                   "is provided"))
    elif match == "Exact" and resource_version == "0":
        problems.append(FieldError("FieldValueForbidden", "resourceVersionMatch", None,
                                   'resourceVersionMatch "exact" is forbidden for '
                                   'resourceVersion "0"'))
    if problems:
        raise errors.invalid("meta.k8s.io", "ListOptions", "", problems)


def _item_key(obj: Obj) -> str:
    meta = obj["metadata"]
    return key_text((meta.get("namespace", ""), meta["name"]))


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start},
                     separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("continue key is not valid: incorrect encoded start "
                             "resourceVersion (version meta.k8s.io/v1)")
        return int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError) as e:
        raise errors.bad_request(f"continue key is not valid: {e}") from None
