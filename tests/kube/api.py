"""The HTTP side of the fake API server: authentication, URL routing, verbs, content types.

Paths follow the real layout:

    /api/v1/{resource}[/{name}[/{subresource}]]                    cluster-scoped, or all namespaces
    /api/v1/namespaces/{ns}/{resource}[/{name}[/{subresource}]]    namespaced
    /apis/{group}/{version}/...                                    the same for named groups
    /api/v1/watch/... and /apis/{group}/{version}/watch/...         the legacy watch prefix

besides /version, discovery (/api, /apis, /apis/{group}) and /openapi/v3 (openapi.py).

Each resource request is recorded as (group, resource, subresource, RBAC verb)
once it is authenticated, before a fault injected by a test can fail it.
"""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from . import discovery, errors, openapi
from .errors import ApiError, FieldError
from .registry import Registry
from .resources import ResourceType, lookup
from .selectors import FieldSelector, SelectorError, parse_field_selector, parse_label_selector
from .store import Store
from .watch import WatchHub, WatchParams, WatchStream, parse_bool

Obj = dict[str, Any]

_BODY_TYPES = ["application/json", "application/yaml"]
_NAMESPACE_SUBRESOURCES = ("status", "finalize")
MAX_BODY = 3 * 1024 * 1024  # the real server's limit for a request body


@dataclass(frozen=True)
class Target:
    """What a resource URL names (the API server's RequestInfo)."""

    group: str
    version: str
    resource: str
    namespace: str | None
    name: str
    subresource: str
    watch_prefix: bool


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj, separators=(",", ":")).encode() + b"\n",
                        content_type="application/json", headers=headers)


def error_response(err: ApiError) -> web.Response:
    return _json(err.status(), err.code, err.headers)


class ApiServer:
    def __init__(self, store: Store, registry: Registry, token: str,
                 bookmark_interval: float) -> None:
        self.store = store
        self.registry = registry
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.hub = WatchHub()
        self.requests_seen: set[tuple[str, str, str, str]] = set()
        self.faults: list[int] = []
        self.server_address = ""

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        audit = {"Audit-Id": str(uuid.uuid4()), "Cache-Control": "no-cache, private"}
        try:
            resp = await self._handle(request)
        except ApiError as e:
            resp = error_response(e)
        except web.HTTPRequestEntityTooLarge:
            resp = error_response(ApiError(413, "RequestEntityTooLarge",
                                           "Request entity too large: limit is 3145728"))
        if not resp.prepared:
            resp.headers.update(audit)
        return resp

    # --- authentication and routing ---

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                token.strip().encode(), self.token.encode()):
            # Anonymous requests are disabled, so a missing token is as bad as a wrong one.
            raise errors.unauthorized()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self._authenticate(request)
        _check_accept(request.headers.get("Accept", ""))
        parts = [p for p in request.path.split("/") if p]
        if parts == ["version"]:
            return self._get_only(request, discovery.VERSION)
        if parts[:2] == ["openapi", "v3"]:
            return self._get_only(request, _openapi_v3(parts[2:]))
        if not parts or parts[0] not in ("api", "apis"):
            raise errors.not_found_path()
        if parts[0] == "api":
            if len(parts) == 1:
                return self._get_only(request, discovery.api_versions(self.server_address))
            group, version, rest = "", parts[1], parts[2:]
        else:
            if len(parts) == 1:
                return self._get_only(request, discovery.api_group_list())
            if len(parts) == 2:
                return self._get_only(request, discovery.api_group(parts[1]))
            group, version, rest = parts[1], parts[2], parts[3:]
        if not rest:
            return self._get_only(request, discovery.resource_list(group, version))
        if discovery.resource_list(group, version) is None:
            raise errors.not_found_path()
        target = _target(group, version, rest)
        verb = _verb(request, target)
        self.requests_seen.add((group, target.resource, target.subresource, verb))
        if self.faults:
            code = self.faults.pop(0)
            raise errors.from_code(code, "injected fault (fake API server: fail_next)")
        rt = lookup(group, version, target.resource)
        if rt is None or (target.namespace is not None and not rt.namespaced):
            raise errors.not_found_path()
        if target.subresource and target.subresource not in rt.subresources:
            raise errors.not_found_path()
        return await self._dispatch(request, rt, target, verb)

    @staticmethod
    def _get_only(request: web.Request, doc: Obj | None) -> web.Response:
        if doc is None:
            raise errors.not_found_path()
        if request.method != "GET":
            raise errors.method_not_allowed()
        return _json(doc)

    # --- verbs ---

    async def _dispatch(self, request: web.Request, rt: ResourceType, t: Target,
                        verb: str) -> web.StreamResponse:
        if rt.namespaced and t.namespace is None:
            # The all-namespaces path of a namespaced resource only lists and watches.
            if t.name:
                raise errors.not_found_path()
            if verb not in ("list", "watch"):
                raise errors.method_not_allowed()
        query = request.query
        handlers: dict[str, Callable[[], Awaitable[web.StreamResponse]]] = {
            "get": lambda: self._get(rt, t),
            "list": lambda: self._list(rt, t, query),
            "watch": lambda: self._watch(request, rt, t, query),
            "create": lambda: self._create(request, rt, t),
            "update": lambda: self._update(request, rt, t),
            "patch": lambda: self._patch(request, rt, t),
            "delete": lambda: self._delete(request, rt, t),
            "deletecollection": lambda: self._delete_collection(request, rt, t),
        }
        return await handlers[verb]()

    async def _get(self, rt: ResourceType, t: Target) -> web.Response:
        if t.subresource == "scale":
            return _json(self.registry.get_scale(t.namespace or "", t.name))
        return _json(self.registry.get(rt, t.namespace, t.name))

    async def _list(self, rt: ResourceType, t: Target, query: Any) -> web.Response:
        labels, fields = _selectors(rt, query)
        limit = _int_param(query, "limit")
        return _json(await self.registry.list(
            rt, t.namespace, labels=labels, fields=fields,
            resource_version=query.get("resourceVersion", ""),
            match=query.get("resourceVersionMatch", ""), limit=limit,
            continue_token=query.get("continue", "")))

    async def _watch(self, request: web.Request, rt: ResourceType, t: Target,
                     query: Any) -> web.StreamResponse:
        labels, fields = _selectors(rt, query)
        if t.name:
            # A watch on one object is a watch on its collection for that name.
            fields = fields.with_term("metadata.name", t.name)
        params = WatchParams(query, labels, fields)
        stream = WatchStream(self.store, self.hub, rt, t.namespace, params,
                             self.bookmark_interval)
        return await stream.serve(request)

    async def _create(self, request: web.Request, rt: ResourceType, t: Target) -> web.Response:
        body = await _read_body(request)
        created = self.registry.create(rt, t.namespace, body,
                                       dry_run=_dry_run(request, "CreateOptions"))
        return _json(created, 201)

    async def _update(self, request: web.Request, rt: ResourceType, t: Target) -> web.Response:
        body = await _read_body(request)
        dry_run = _dry_run(request, "UpdateOptions")
        if t.subresource == "scale":
            return _json(self.registry.update_scale(t.namespace or "", t.name, body,
                                                    dry_run=dry_run))
        obj, created = self.registry.update(rt, t.namespace, t.name, body,
                                            subresource=t.subresource, dry_run=dry_run)
        return _json(obj, 201 if created else 200)

    async def _patch(self, request: web.Request, rt: ResourceType, t: Target) -> web.Response:
        content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
        raw = await request.read()
        dry_run = _dry_run(request, "PatchOptions")
        if t.subresource == "scale":
            return _json(self.registry.patch_scale(t.namespace or "", t.name, content_type, raw,
                                                   dry_run=dry_run))
        return _json(self.registry.patch(rt, t.namespace, t.name, content_type, raw,
                                         subresource=t.subresource, dry_run=dry_run))

    async def _delete(self, request: web.Request, rt: ResourceType, t: Target) -> web.Response:
        options = await _delete_options(request)
        return _json(self.registry.delete(rt, t.namespace, t.name, options,
                                          dry_run=_dry_run(request, "DeleteOptions")))

    async def _delete_collection(self, request: web.Request, rt: ResourceType,
                                 t: Target) -> web.Response:
        labels, fields = _selectors(rt, request.query)
        options = await _delete_options(request)
        return _json(self.registry.delete_collection(
            rt, t.namespace, labels=labels, fields=fields, options=options,
            dry_run=_dry_run(request, "DeleteOptions")))


def _openapi_v3(rest: list[str]) -> Obj | None:
    if not rest:
        return openapi.index()
    if rest[0] == "api" and len(rest) == 2:
        return openapi.document("", rest[1])
    if rest[0] == "apis" and len(rest) == 3:
        return openapi.document(rest[1], rest[2])
    return None


# --- request parsing ---

def _target(group: str, version: str, rest: list[str]) -> Target:
    watch_prefix = rest[0] == "watch"
    if watch_prefix:
        rest = rest[1:]
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in _NAMESPACE_SUBRESOURCES:
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        raise errors.not_found_path()
    return Target(group, version, rest[0], namespace, rest[1] if len(rest) > 1 else "",
                  rest[2] if len(rest) > 2 else "", watch_prefix)


def _verb(request: web.Request, t: Target) -> str:
    """The RBAC verb of a request; 405 for a method the path does not take."""
    method = request.method
    named = bool(t.name)
    if t.watch_prefix:
        if method != "GET" or t.subresource:
            raise errors.method_not_allowed()
        return "watch"
    if method == "GET":
        if not t.subresource and parse_bool(request.query.get("watch")):
            return "watch"
        return "get" if named else "list"
    if t.subresource and method not in ("PUT", "PATCH"):
        raise errors.method_not_allowed()
    if method == "POST" and not named:
        return "create"
    if method == "PUT" and named:
        return "update"
    if method == "PATCH" and named:
        return "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    raise errors.method_not_allowed()


def _check_accept(accept: str) -> None:
    if not accept:
        return
    for part in accept.split(","):
        media = part.split(";")[0].strip().lower()
        if media in ("application/json", "application/*", "*/*"):
            return
    raise errors.not_acceptable(["application/json", "application/yaml",
                                 "application/vnd.kubernetes.protobuf"])


def _selectors(rt: ResourceType, query: Any) -> tuple[Any, FieldSelector]:
    try:
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"))
    except SelectorError as e:
        raise errors.bad_request(str(e)) from None
    for term in fields.terms:
        problem = rt.check_field(term.field)
        if problem:
            raise errors.bad_request(problem)
    return labels, fields


def _int_param(query: Any, name: str) -> int:
    raw = query.get(name)
    if raw in (None, ""):
        return 0
    try:
        return int(raw)
    except ValueError:
        raise errors.bad_request(f'strconv.ParseInt: parsing "{raw}": invalid syntax') from None


def _dry_run(request: web.Request, options_kind: str) -> bool:
    values = request.query.getall("dryRun", [])
    for value in values:
        if value != "All":
            raise errors.invalid("meta.k8s.io", options_kind, "", [FieldError(
                "FieldValueNotSupported", "dryRun", [value], 'supported values: "All"')])
    return bool(values)


async def _read_body(request: web.Request) -> Any:
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type not in _BODY_TYPES:
        raise errors.unsupported_media_type(content_type, _BODY_TYPES)
    raw = await request.read()
    try:
        if content_type == "application/yaml":
            return yaml.safe_load(raw)
        return json.loads(raw)
    except (ValueError, yaml.YAMLError) as e:
        raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from None


async def _delete_options(request: web.Request) -> Obj:
    options: Obj = {}
    query = request.query
    if query.get("gracePeriodSeconds"):
        options["gracePeriodSeconds"] = _int_param(query, "gracePeriodSeconds")
    if query.get("propagationPolicy"):
        options["propagationPolicy"] = query["propagationPolicy"]
    raw = await request.read()
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise errors.bad_request(f"couldn't get version/kind; json parse error: {e}") from None
        if isinstance(body, dict):
            options.update({k: v for k, v in body.items() if v is not None})
    policy = options.get("propagationPolicy")
    if policy not in (None, "Foreground", "Background", "Orphan"):
        raise errors.invalid("meta.k8s.io", "DeleteOptions", "", [FieldError(
            "FieldValueNotSupported", "propagationPolicy", policy,
            'supported values: "Foreground", "Background", "Orphan", "nil"')])
    return options
