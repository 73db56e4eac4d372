"""The three PATCH flavours: JSON merge patch, strategic merge patch and JSON patch.

- application/merge-patch+json: RFC 7386. Maps merge, `null` deletes, a list
  (or any non-map) replaces the value whole.
- application/strategic-merge-patch+json: a merge patch, except that lists the
  Kubernetes schema marks `patchStrategy: merge` are merged element by element
  on their `patchMergeKey` (containers by `name`, container ports by
  `containerPort`, service ports by `port`, ...), and the `$patch`,
  `$retainKeys`, `$deleteFromPrimitiveList/` and `$setElementOrder/`
  directives are honoured. Lists not in the schema are replaced, as by the
  real server (they are "atomic").
- application/json-patch+json: RFC 6902 operations on JSON pointers (RFC 6901).
"""

from __future__ import annotations

import copy
import json
from typing import Any

# Marks a list in the strategic merge schema whose items are primitives merged as a set.
PRIMITIVE = ""


class PatchError(Exception):
    """The patch cannot be applied; `code` is what the API server answers (400 or 422)."""

    def __init__(self, message: str, code: int = 422) -> None:
        super().__init__(message)
        self.code = code


# --- strategic merge schema: list path (map keys only, list positions skipped) -> merge key ---

_META = {("metadata", "finalizers"): PRIMITIVE, ("metadata", "ownerReferences"): "uid"}


def _container_lists(prefix: tuple[str, ...]) -> dict[tuple[str, ...], str]:
    out: dict[tuple[str, ...], str] = {}
    for containers in ("containers", "initContainers", "ephemeralContainers"):
        base = (*prefix, containers)
        out[base] = "name"
        out[(*base, "env")] = "name"
        out[(*base, "ports")] = "containerPort"
        out[(*base, "volumeMounts")] = "mountPath"
        out[(*base, "volumeDevices")] = "devicePath"
    out[(*prefix, "volumes")] = "name"
    out[(*prefix, "imagePullSecrets")] = "name"
    out[(*prefix, "hostAliases")] = "ip"
    out[(*prefix, "topologySpreadConstraints")] = "topologyKey"
    out[(*prefix, "resourceClaims")] = "name"
    out[(*prefix, "schedulingGates")] = "name"
    return out


_CONDITIONS = {("status", "conditions"): "type"}

SCHEMAS: dict[str, dict[tuple[str, ...], str]] = {
    "Deployment": {
        **_META,
        ("spec", "template", "metadata", "finalizers"): PRIMITIVE,
        ("spec", "template", "metadata", "ownerReferences"): "uid",
        **_container_lists(("spec", "template", "spec")),
        **_CONDITIONS,
    },
    "Pod": {**_META, **_container_lists(("spec",)), **_CONDITIONS,
            ("status", "podIPs"): "ip"},
    "Service": {**_META, ("spec", "ports"): "port", **_CONDITIONS},
    "Namespace": {**_META, **_CONDITIONS},
}


def schema_for(kind: str) -> dict[tuple[str, ...], str]:
    return SCHEMAS.get(kind, _META)


# --- RFC 7386 ---

def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


# --- strategic merge patch ---

_DELETE = object()  # a map whose patch says `$patch: delete`


def strategic_merge_patch(original: dict[str, Any], patch: Any,
                          schema: dict[tuple[str, ...], str]) -> dict[str, Any]:
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch: the patch must be a JSON object", 400)
    result = _smp_map(original, patch, (), schema)
    return {} if result is _DELETE else result


def _strip(value: Any) -> Any:
    """A value with every directive removed, for parts of a patch that have no original."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items()
                if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and "$patch" in v)]
    return value


def _smp_map(original: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...],
             schema: dict[tuple[str, ...], str]) -> Any:
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "delete":
        return _DELETE
    if directive == "replace":
        return _strip(patch)
    if directive is not None:
        raise PatchError(f"Unknown patch type: {directive} in map: {json.dumps(patch)}", 400)
    retain = patch.pop("$retainKeys", None)
    if retain is not None and not isinstance(retain, list):
        raise PatchError("$retainKeys must be a list", 400)
    order: dict[str, Any] = {}
    removals: dict[str, Any] = {}
    for key in list(patch):
        if key.startswith("$setElementOrder/"):
            order[key.split("/", 1)[1]] = patch.pop(key)
        elif key.startswith("$deleteFromPrimitiveList/"):
            removals[key.split("/", 1)[1]] = patch.pop(key)
    result = copy.deepcopy(original) if isinstance(original, dict) else {}
    if retain is not None:
        result = {k: v for k, v in result.items() if k in retain}
    for key, value in patch.items():
        sub = (*path, key)
        current = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(current if isinstance(current, dict) else {}, value, sub, schema)
            if merged is _DELETE:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and sub in schema and isinstance(current, list):
            result[key] = _smp_list(current, value, schema[sub], sub, schema)
        else:
            result[key] = _strip(value)
    for key, values in removals.items():
        if isinstance(result.get(key), list) and isinstance(values, list):
            result[key] = [v for v in result[key] if v not in values]
    for key, wanted in order.items():
        if isinstance(result.get(key), list) and isinstance(wanted, list):
            result[key] = _reorder(result[key], wanted, schema.get((*path, key)))
    return result


def _smp_list(original: list[Any], patch: list[Any], merge_key: str, path: tuple[str, ...],
              schema: dict[tuple[str, ...], str]) -> list[Any]:
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return _strip([item for item in patch
                       if not (isinstance(item, dict) and item.get("$patch") == "replace")])
    if merge_key == PRIMITIVE:
        return list(original) + [v for v in patch if v not in original]
    result = copy.deepcopy(original)
    for item in patch:
        if not isinstance(item, dict):
            raise PatchError(
                f"map: {item!r} does not contain declared merge key: {merge_key}", 400)
        if merge_key not in item:
            raise PatchError(
                f"map: {json.dumps(item)} does not contain declared merge key: {merge_key}", 400)
        key = item[merge_key]
        index = next((i for i, old in enumerate(result)
                      if isinstance(old, dict) and old.get(merge_key) == key), None)
        if item.get("$patch") == "delete":
            result = [old for old in result
                      if not (isinstance(old, dict) and old.get(merge_key) == key)]
        elif index is None:
            result.append(_strip(item))
        else:
            merged = _smp_map(result[index], item, path, schema)
            if merged is _DELETE:
                del result[index]
            else:
                result[index] = merged
    return result


def _reorder(items: list[Any], wanted: list[Any], merge_key: str | None) -> list[Any]:
    def ident(item: Any) -> Any:
        if merge_key and isinstance(item, dict):
            return json.dumps(item.get(merge_key))
        return json.dumps(item, sort_keys=True)

    rank = {ident(w): i for i, w in enumerate(wanted)}
    return sorted(items, key=lambda item: rank.get(ident(item), len(rank)))


# --- RFC 6902 ---

def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchError("JSON pointer must be a string", 400)
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f'JSON pointer must be empty or start with a "/": {path!r}', 400)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(token: str, size: int, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return size
    if not token.isdigit() or (len(token) > 1 and token.startswith("0")):
        raise PatchError(f"invalid array index: {token!r}")
    index = int(token)
    if index > size or (index == size and not allow_end):
        raise PatchError(f"array index out of bounds: {index}")
    return index


def _missing(path: str) -> PatchError:
    return PatchError(f'doc is missing path: "{path}": missing value')


def _parent(doc: Any, tokens: list[str], path: str) -> Any:
    node = doc
    for tok in tokens[:-1]:
        if isinstance(node, dict):
            if tok not in node:
                raise _missing(path)
            node = node[tok]
        elif isinstance(node, list):
            node = node[_index(tok, len(node), False)]
        else:
            raise _missing(path)
    return node


def _locate(doc: Any, path: str) -> tuple[Any, str] | None:
    """The container a JSON pointer ends in and its last token; None for the whole document."""
    tokens = _pointer(path)
    if not tokens:
        return None
    return _parent(doc, tokens, path), tokens[-1]


def _get(doc: Any, path: str) -> Any:
    where = _locate(doc, path)
    if where is None:
        return doc
    parent, last = where
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(last, len(parent), False)]
    raise _missing(path)


def _set(doc: Any, path: str, value: Any, *, add: bool) -> Any:
    """RFC 6902 `add` (a new key, or an insertion into a list) or `replace` (an existing one)."""
    where = _locate(doc, path)
    if where is None:
        return value
    parent, last = where
    if isinstance(parent, dict) and (add or last in parent):
        parent[last] = value
    elif isinstance(parent, list) and add:
        parent.insert(_index(last, len(parent), True), value)
    elif isinstance(parent, list):
        parent[_index(last, len(parent), False)] = value
    elif add:
        raise _missing(path)
    else:
        raise PatchError(f'doc is missing key: {path}: missing value')
    return doc


def _remove(doc: Any, path: str) -> tuple[Any, Any]:
    where = _locate(doc, path)
    if where is None:
        raise PatchError("unable to remove the whole document")
    parent, last = where
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f'unable to remove nonexistent key: {last}: missing value')
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(last, len(parent), False))
    raise _missing(path)


def json_patch(document: Any, operations: Any) -> Any:
    if not isinstance(operations, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch",
                         400)
    doc = copy.deepcopy(document)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op:
            raise PatchError("Unexpected kind: unknown", 400)
        kind, path = op["op"], op.get("path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"missing value for {kind} operation", 400)
        if kind == "add":
            doc = _set(doc, path, copy.deepcopy(op["value"]), add=True)
        elif kind == "remove":
            doc, _ = _remove(doc, path)
        elif kind == "replace":
            doc = _set(doc, path, copy.deepcopy(op["value"]), add=False)
        elif kind in ("move", "copy"):
            source = op.get("from")
            if kind == "move" and (path == source or str(path).startswith(f"{source}/")):
                if path != source:
                    raise PatchError(f"unable to move {source} into its own child {path}")
                continue
            value = copy.deepcopy(_get(doc, source))
            if kind == "move":
                doc, _ = _remove(doc, source)
            doc = _set(doc, path, value, add=True)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"testing value {path} failed: test failed")
        else:
            raise PatchError(f"Unexpected kind: {kind}", 400)
    return doc
