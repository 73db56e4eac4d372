"""OpenAPI v3 for kubectl: /openapi/v3 and one document per group-version, paths only.

kubectl reads OpenAPI for two things, and this serves just enough for both:

- validation: before it sends an object, kubectl looks for the PATCH operation
  of the object's kind (by `x-kubernetes-group-version-kind`) and whether it
  takes the `fieldValidation` query parameter. It does, so kubectl leaves the
  validation to the server (it sends `fieldValidation=Strict`) instead of
  validating on its side with the OpenAPI v2 document, which it reads only as
  protobuf (this fake serves no /openapi/v2: 406 to kubectl's protobuf-only
  Accept, 404 otherwise).
- `kubectl apply`'s strategic merge patch: with no schema in `components` for
  the kind, kubectl computes the patch from the types compiled into it (the
  same patch the real schemas give), and a JSON merge patch for custom
  resources, as with a real server.

What this leaves out: the schemas, so `kubectl explain` finds nothing.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from .resources import GROUPS, RESOURCES, ResourceType

Obj = dict[str, Any]

_PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json"]
_WRITE_PARAMETERS = ("dryRun", "fieldManager", "fieldValidation")


def group_version_path(group: str, version: str) -> str:
    """The document's name below /openapi/v3/: `api/v1`, `apis/apps/v1`."""
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _query(*names: str) -> list[Obj]:
    return [{"name": name, "in": "query", "schema": {"type": "string"}} for name in names]


def _operation(rt: ResourceType, action: str, *, parameters: tuple[str, ...] = (),
               body_types: list[str] | None = None) -> Obj:
    operation: Obj = {
        "operationId": f"{action}{rt.kind}",
        "parameters": _query(*parameters),
        "responses": {"200": {"description": "OK"}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rt.group, "version": rt.version,
                                            "kind": rt.kind},
    }
    if body_types:
        operation["requestBody"] = {"content": {t: {"schema": {"type": "object"}}
                                                for t in body_types}}
    return operation


def _paths(rt: ResourceType) -> Obj:
    root = "/" + group_version_path(rt.group, rt.version)
    collection = (f"{root}/namespaces/{{namespace}}/{rt.plural}" if rt.namespaced
                  else f"{root}/{rt.plural}")
    return {
        collection: {
            "get": _operation(rt, "list", parameters=("labelSelector", "fieldSelector",
                                                      "watch")),
            "post": _operation(rt, "post", parameters=_WRITE_PARAMETERS,
                               body_types=["application/json", "application/yaml"]),
        },
        f"{collection}/{{name}}": {
            "get": _operation(rt, "get"),
            "put": _operation(rt, "put", parameters=_WRITE_PARAMETERS,
                              body_types=["application/json", "application/yaml"]),
            "patch": _operation(rt, "patch", parameters=(*_WRITE_PARAMETERS, "force"),
                                body_types=_PATCH_TYPES),
            "delete": _operation(rt, "delete", parameters=("dryRun",)),
        },
    }


def document(group: str, version: str) -> Obj | None:
    """The OpenAPI v3 document of one group-version, or None if it is not served."""
    if version not in GROUPS.get(group, []):
        return None
    paths: Obj = {}
    for rt in RESOURCES:
        if (rt.group, rt.version) == (group, version):
            paths.update(_paths(rt))
    return {"openapi": "3.0.0",
            "info": {"title": "Kubernetes (fake)", "version": "unversioned"},
            "paths": paths, "components": {"schemas": {}}}


def _hash(doc: Obj) -> str:
    return hashlib.sha512(json.dumps(doc, sort_keys=True).encode()).hexdigest().upper()


def index() -> Obj:
    """/openapi/v3: where each group-version's document is, with a hash for client caches."""
    paths: Obj = {}
    for group, versions in GROUPS.items():
        for version in versions:
            name = group_version_path(group, version)
            doc = document(group, version)
            assert doc is not None
            paths[name] = {"serverRelativeURL": f"/openapi/v3/{name}?hash={_hash(doc)}"}
    return {"paths": paths}
