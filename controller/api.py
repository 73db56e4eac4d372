"""The controller's HTTP API: status, keys, releases, and what proxies in other processes need.

Proxies watch the route table (`GET /v1/routes`, a long poll), ask for
activations (`POST /v1/activate`) and report activity (`POST /v1/activity`).
Every /v1/* call needs the token and no browser may make one (api_guard.py);
/healthz, /readyz and /metrics stay open. Every error is JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .activity_reports import ActivityReports, ActivitySource, RemoteActivity, parse_report
from .api_guard import ApiGuard
from .config import ConfigError, load_config, parse_version
from .idempotency import IdempotentAnswers
from .keys import SHA256_HEX
from .releases import ReleaseConflict, ReleaseRefused
from .runtimes.base import StartFailed
from .scaler import DeployRefused, Scaler
from .spec import KEY_ID, READY, STOPPING, RouteTable, routes_to_wire

log = logging.getLogger("wakegate.api")

MAX_WAIT = 30.0  # the longest a route-table watch is held open
_INSTANCE_BODY_HINT = 'Send a JSON object: {"environment": ..., "service": ...}.'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Key = tuple[str, str]


def apply_file(scaler: Scaler, path: str, expect_sha256: str | None = None) -> web.Response:
    """Load, validate and apply the controller's own config file; an invalid one changes nothing.

    `expect_sha256`: the digest of the file the caller validated; a file that
    differs is refused (the caller edited another file than the controller reads).
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        return _error(400, "invalid_config", f"{path}: cannot read the controller's config "
                      f"file: {exc.strerror}. The running system keeps the old one.",
                      problems=[f"{path}: {exc.strerror}"])
    if expect_sha256 is not None and hashlib.sha256(raw).hexdigest() != expect_sha256:
        return _error(409, "config_differs",
                      f"The controller applies its own config file, {path}, and it differs from "
                      "the file you checked: edit that file (or run `wakegate apply -c` with "
                      "it), then apply again. Nothing was changed.", config=path)
    try:
        config = load_config(path, raw)
    except ConfigError as exc:
        log.error("config not applied:\n%s", "\n".join(exc.problems))
        return _error(400, "invalid_config", "The config was refused as a whole; the running "
                      "system keeps the old one.", problems=exc.problems)
    try:
        result = scaler.apply(config)
    except DeployRefused as exc:
        log.error("config not applied: %s", exc)
        return _error(409, "needs_restart", f"{exc}. Nothing was changed.")
    log.info("applied %s: added %s, removed %s", path, result["added"] or "none",
             result["removed"] or "none")
    return web.json_response({**result, "config": path})


async def _string_field(request: web.Request, name: str) -> str:
    """The one string field a call's JSON body must have, or 400 saying so."""
    hint = f'Send a JSON object: {{"{name}": "..."}}.'
    body = await _json_body(request, hint)
    if not isinstance(body, dict) or not isinstance(body.get(name), str):
        raise _BadRequest(hint)
    return str(body[name])


def _not_leader() -> web.Response:
    return _error(503, "not_leader",
                  "This controller is not acting yet (it starts, or waits to become the "
                  "leader): retry, or ask the one that leads.")


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


class _BadRequest(Exception):
    """An answer of 400 with this message."""


async def _json_body(request: web.Request, hint: str) -> Any:
    try:
        return await request.json()
    except (ValueError, RecursionError):
        # Not JSON, not UTF-8, an integer of thousands of digits, nesting too deep.
        raise _BadRequest(f"The body is not valid JSON. {hint}") from None


class RouteFeed:
    """The route table as proxies in other processes get it: numbered, watched, drained.

    Versions count from 1 in every controller process; `epoch` (random, new
    at every start) tells a proxy that a restarted controller's version 1 is
    newer than the version 900 it had. A drained instance (see
    activity_reports.py) is sent as `stopping` without endpoints, so that
    proxies hold its requests while the controller makes sure it is idle.
    """

    def __init__(self, scaler: Scaler) -> None:
        self.epoch = secrets.token_hex(8)
        self.version = 0
        self._table: RouteTable | None = None
        self._draining: dict[Key, int] = {}
        self._routes_json = b"[]"
        self._changed = asyncio.Event()
        self._closed = False
        scaler.subscribe(self._on_table)

    def _on_table(self, table: RouteTable) -> None:
        self._table = table
        for key in list(self._draining):
            route = table.by_key.get(key)
            if route is None or route.state != READY:
                del self._draining[key]  # asleep, going to sleep or gone: nothing to drain
        self._bump()

    def _bump(self) -> None:
        assert self._table is not None
        self.version += 1
        routes = routes_to_wire(self._table)
        for wire in routes:
            if (wire["environment"], wire["service"]) in self._draining:
                wire["state"], wire["endpoints"] = STOPPING, []
        # Encoded once per version, however many proxies fetch it.
        self._routes_json = json.dumps(routes, separators=(",", ":")).encode()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- drains (activity_reports.Drains) ---

    def drain(self, key: Key) -> tuple[str, int] | None:
        if key not in self._draining:
            route = self._table.by_key.get(key) if self._table else None
            if route is None or route.state != READY:
                return None
            self._draining[key] = self.version + 1
            self._bump()
        return self.epoch, self._draining[key]

    def undrain(self, key: Key) -> None:
        if self._draining.pop(key, None) is not None:
            self._bump()

    def draining(self) -> Iterable[Key]:
        return self._draining.keys()

    # --- the watch ---

    def current(self, epoch: str, version: int) -> bool:
        return epoch == self.epoch and version == self.version

    async def changed(self, timeout: float) -> None:
        """Return when the next version is out, after `timeout` seconds, or at close."""
        if self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def body(self) -> bytes:
        # `now` lets the proxy move backoff_until into its own monotonic clock.
        head = json.dumps({"epoch": self.epoch, "version": self.version,
                           "now": time.monotonic()})
        return head[:-1].encode() + b',"routes":' + self._routes_json + b"}"

    def close(self) -> None:
        """Answer every open watch now, so that shutting down does not wait for them."""
        self._closed = True
        self._changed.set()


async def create_key(scaler: Scaler, environment: str, service: str) -> str:
    """A new API key for an instance, stored (as a digest) and published to the proxies."""
    make = getattr(scaler, "create_key", None)
    if make is not None:  # the scaler knows how its key store writes (Kubernetes: a Secret)
        return str(await make(environment, service))
    key = str(scaler.keys.create(environment, service))
    scaler.keys_changed((environment, service))
    return key


def _sleep_info(scaler: Scaler) -> Callable[[Key], tuple[float, float] | None]:
    def info(key: Key) -> tuple[float, float] | None:
        inst = scaler.instances.get(key)
        if inst is None or inst.state != READY:
            return None
        env = inst.spec.environment
        if not env.sleeps or env.idle_timeout is None:
            return None
        floor = getattr(inst, "activity_floor", None) or getattr(inst, "created", 0.0)
        return env.idle_timeout, max(floor, inst.ready_since)

    return info


class ControllerAPI:
    def __init__(
        self,
        scaler: Scaler,
        registry: CollectorRegistry,
        proxy_port: Callable[[], int],
        guard: ApiGuard,
        config_path: str,
        local_activity: ActivitySource | None = None,
        local_key_uses: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """`local_activity`, `local_key_uses`: a proxy in this process (`wakegate up`), if
        there is one (its activity, and when it last accepted each API key).

        `config_path`: the file `apply` re-reads (the one the controller started with).
        """
        self.scaler = scaler
        self.registry = registry
        self.proxy_port = proxy_port
        self.guard = guard
        self.config_path = config_path
        self._local_key_uses = local_key_uses
        self._remote_key_uses: dict[str, float] = {}  # key id → Unix time, from reports
        self.routes = RouteFeed(scaler)
        self.idempotent = IdempotentAnswers()
        self.remote = RemoteActivity(
            ActivityReports(), _sleep_info(scaler), self.routes, local_activity
        )
        # Reports of remote proxies count as activity wherever the scaler looks.
        scaler.add_activity_source(self.remote)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors_and_auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/keys", self.create_key)
        app.router.add_get("/v1/keys", self.list_keys)
        app.router.add_delete("/v1/keys/{id}", self.revoke_key)
        app.router.add_post("/v1/deploy", self.deploy)
        app.router.add_post("/v1/promote", self.promote)
        app.router.add_post("/v1/apply", self.apply)
        app.router.add_post("/v1/release/{action:promote|rollback}", self.release)
        app.router.add_get("/v1/release/status", self.release_status)
        app.router.add_get("/v1/routes", self.watch_routes)
        app.router.add_post("/v1/activate", self.activate)
        app.router.add_post("/v1/activity", self.activity)
        app.router.add_get("/v1/proxies", self.proxies)
        return app

    def close(self) -> None:
        self.routes.close()

    @web.middleware
    async def _errors_and_auth(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            refusal = self.guard.refusal(request)
            if refusal is not None:
                return refusal
        try:
            return await handler(request)
        except _BadRequest as exc:
            return _error(400, "bad_request", str(exc))
        except web.HTTPException as exc:
            if exc.status == 404:
                return _error(404, "not_found", f"There is no {request.path} in this API.")
            if exc.status == 405:
                return _error(405, "method_not_allowed",
                              f"{request.path} does not take {request.method}.")
            if exc.status == 413:
                return _error(413, "body_too_large", "The request body is too large.")
            return _error(exc.status, "bad_request", exc.reason)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("error in %s %s", request.method, request.path)
            return _error(500, "internal_error", "The controller failed on this call; "
                          "its log says why.")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        # Ready only once it acts (Kubernetes: holds the Lease), so that a
        # Service sends proxies to the leader and never to a standby.
        if not self.scaler.acting:
            return _not_leader()
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"instances": self.scaler.status(self.proxy_port())})

    # --- for proxies ---

    async def watch_routes(self, request: web.Request) -> web.Response:
        """`GET /v1/routes?epoch=E&version=N&wait=S`: the table now if it is not (E, N), else
        when it changes, within S seconds (at most MAX_WAIT); 304 if it did not."""
        if not self.scaler.acting:
            # A standby's table is empty: a proxy must never apply it.
            return _not_leader()
        query = request.query
        epoch = query.get("epoch", "")
        try:
            version = int(query.get("version", "0"))
            wait = float(query.get("wait", "0"))
        except ValueError:
            raise _BadRequest("version must be the version of the table you have (0 for none) "
                              "and wait the seconds to wait for a newer one, e.g. "
                              "?epoch=…&version=12&wait=30") from None
        if version < 0 or not 0 <= wait < float("inf"):
            raise _BadRequest("version and wait must not be negative.")
        if self.routes.current(epoch, version) and wait > 0:
            await self.routes.changed(min(wait, MAX_WAIT))
        if self.routes.current(epoch, version):
            return web.Response(status=304)
        return web.Response(body=self.routes.body(), content_type="application/json")

    async def activate(self, request: web.Request) -> web.Response:
        """`POST /v1/activate {"environment", "service"}` → 202; the table says how it goes."""
        if not self.scaler.acting:
            return _not_leader()
        body = await _json_body(request, _INSTANCE_BODY_HINT)
        if not isinstance(body, dict):
            raise _BadRequest(_INSTANCE_BODY_HINT)
        environment, service = body.get("environment"), body.get("service")
        if not isinstance(environment, str) or not isinstance(service, str):
            raise _BadRequest(f"environment and service must be strings. {_INSTANCE_BODY_HINT}")
        key = (environment, service)
        inst = self.scaler.instances.get(key)
        if inst is None:
            return _error(404, "unknown_instance",
                          f"There is no instance {environment}/{service}.",
                          environment=environment, service=service)
        self.remote.activated(key)
        self.scaler.request_activation(key)
        return web.json_response(
            {"environment": environment, "service": service, "state": inst.state}, status=202
        )

    async def activity(self, request: web.Request) -> web.Response:
        """`POST /v1/activity`: a proxy's report (format in activity_reports.parse_report)."""
        body = await _json_body(request, "Send a proxy activity report (see the README).")
        try:
            report = parse_report(body)
        except ValueError as exc:
            raise _BadRequest(str(exc)) from None
        accepted = self.remote.report(report)
        if accepted:
            now = time.time()
            for ident, idle in report.keys.items():
                at = now - idle
                if at > self._remote_key_uses.get(ident, 0.0):
                    self._remote_key_uses[ident] = at
        return web.json_response({"accepted": accepted})

    async def proxies(self, request: web.Request) -> web.Response:
        return web.json_response({
            "epoch": self.routes.epoch,
            "version": self.routes.version,
            "proxies": self.remote.reports.proxies(),
        })

    # --- keys ---

    async def deploy(self, request: web.Request) -> web.Response:
        """`POST /v1/deploy {"service", "environment", "version"}`: run that version there."""
        hint = 'Send a JSON object: {"service": ..., "environment": ..., "version": ...}.'
        body = await _json_body(request, hint)
        if not isinstance(body, dict):
            raise _BadRequest(hint)
        service, environment = body.get("service"), body.get("environment")
        if not isinstance(service, str) or not isinstance(environment, str):
            raise _BadRequest(f"service and environment must be strings. {hint}")
        try:
            version = parse_version(body.get("version"))
        except ValueError as exc:
            return _error(400, "bad_version", f"version: {exc}. Nothing was changed.")
        if not self.scaler.acting:
            return _not_leader()
        return await self._versions(request,
                                    lambda: self.scaler.deploy(environment, service, version))

    async def promote(self, request: web.Request) -> web.Response:
        """`POST /v1/promote {"service"}`: the private version becomes the demo version."""
        service = await _string_field(request, "service")
        if not self.scaler.acting:
            return _not_leader()
        return await self._versions(request, lambda: self.scaler.promote(service))

    async def apply(self, request: web.Request) -> web.Response:
        """`POST /v1/apply {"sha256": HEX?}`: re-read the controller's own config file and
        reconcile with it, all or nothing.

        Never a path the caller names: whoever may call the API must not make the
        controller read (and run the commands of) any file it likes.
        """
        hint = ('Send a JSON object: {} or {"sha256": "<hex digest of the file you '
                'checked>"}; the controller re-reads its own config file.')
        body = await _json_body(request, hint) if request.body_exists else {}
        if not isinstance(body, dict) or set(body) - {"sha256"}:
            if isinstance(body, dict) and "config" in body:
                raise _BadRequest("apply takes no path: the controller re-reads its own config "
                                  f"file ({self.config_path}). {hint}")
            raise _BadRequest(hint)
        digest = body.get("sha256")
        if digest is not None and (not isinstance(digest, str)
                                   or not SHA256_HEX.fullmatch(digest)):
            raise _BadRequest(f"sha256 must be 64 lowercase hex digits. {hint}")
        return apply_file(self.scaler, self.config_path, digest)

    async def release(self, request: web.Request) -> web.Response:
        """`POST /v1/release/promote|rollback {"service"}`: switch production's colours."""
        service = await _string_field(request, "service")
        if not self.scaler.acting:
            return _not_leader()
        action = request.match_info["action"]

        async def switch() -> dict[str, Any]:
            inst = self.scaler.production_instance(service)
            releases = self.scaler.releases
            return await (releases.promote(inst) if action == "promote"
                          else releases.rollback(inst))

        return await self._versions(request, switch)

    async def release_status(self, request: web.Request) -> web.Response:
        """`GET /v1/release/status?service=S`: both colours, which is live."""
        service = request.query.get("service", "")
        try:
            inst = self.scaler.production_instance(service)
        except LookupError as exc:
            return _error(404, "not_found", f"{exc}.")
        except ReleaseRefused as exc:
            return _error(409, "refused", f"{exc}.")
        return web.json_response(self.scaler.releases.status(inst))

    async def _versions(self, request: web.Request,
                        change: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
        """A change's answer; the same answer again for a repeat with its Idempotency-Key."""
        return await self.idempotent.answer(request, lambda: self._change(change))

    async def _change(self, change: Callable[[], Awaitable[dict[str, Any]]]) -> web.Response:
        try:
            result = await change()
        except LookupError as exc:
            return _error(404, "not_found", f"{exc}. `wakegate status` lists the instances.")
        except (DeployRefused, ReleaseRefused) as exc:
            return _error(409, "refused", f"{exc}. Nothing was changed.")
        except ReleaseConflict as exc:
            return _error(409, "conflict", f"{exc}. Nothing was changed.")
        except StartFailed as exc:
            return _error(502, "start_failed",
                          f"the new version did not start ({exc}); the old one keeps serving.")
        return web.json_response(result)

    async def list_keys(self, request: web.Request) -> web.Response:
        """`GET /v1/keys[?service=S]`: every key's id, instance, creation and last use."""
        service = request.query.get("service")
        if service is not None and service not in {svc for _, svc in self.scaler.instances}:
            return _error(404, "unknown_service", f"There is no service {service!r}.",
                          service=service)
        keys = self.scaler.keys
        uses = dict(self._remote_key_uses)
        if self._local_key_uses is not None:
            for ident, at in self._local_key_uses().items():
                uses[ident] = max(uses.get(ident, 0.0), at)
        keys.note_used(uses)
        rows = [dataclasses.asdict(info) for info in keys.list()
                if service is None or info.service == service]
        rows.sort(key=lambda row: (row["environment"], row["service"], row["created"]))
        return web.json_response({"keys": rows})

    async def revoke_key(self, request: web.Request) -> web.Response:
        """`DELETE /v1/keys/{id}`: the key stops working on every proxy at once."""
        ident = request.match_info["id"]
        if not KEY_ID.fullmatch(ident):
            raise _BadRequest("A key id is 12 lowercase hex digits, as `wakegate keys list` "
                              "shows them.")
        found = await self.scaler.revoke_key(ident)
        if found is None:
            return _error(404, "unknown_key", f"There is no key {ident}; `wakegate keys list` "
                          "shows the ids.")
        log.info("revoked API key %s of %s/%s", ident, *found)
        return web.json_response({"id": ident, "environment": found[0], "service": found[1],
                                  "revoked": True})

    async def create_key(self, request: web.Request) -> web.Response:
        hint = 'Send a JSON object: {"service": ..., "environment": ...}.'
        body = await _json_body(request, hint)
        if not isinstance(body, dict):
            raise _BadRequest(hint)
        service = body.get("service")
        environment = body.get("environment", "private")
        if not isinstance(service, str) or not isinstance(environment, str):
            raise _BadRequest("service and environment must be strings.")
        # The instances, not the config: a runtime may find services elsewhere
        # (Kubernetes: in the cluster).
        keys = list(self.scaler.instances)
        services = sorted({svc for _, svc in keys})
        environments = sorted({env for env, _ in keys} | set(self.scaler.config.environments))
        if service not in services:
            return _error(404, "unknown_service",
                          f"There is no service {service!r}; known: "
                          f"{', '.join(services) or 'none'}.", service=service)
        if environment not in environments:
            return _error(404, "unknown_environment",
                          f"There is no environment {environment!r}; known: "
                          f"{', '.join(environments)}.", environment=environment)
        inst = self.scaler.instances.get((environment, service))
        if inst is None:
            runs_in = sorted(env for env, svc in keys if svc == service)
            return _error(404, "unknown_instance",
                          f"{service} does not run in {environment}; it runs in "
                          f"{', '.join(runs_in)}.", environment=environment, service=service)
        if inst.spec.environment.access != "api_key":
            return _error(400, "public_instance",
                          f"{environment}/{service} is public: it does not check API keys.",
                          environment=environment, service=service)
        key = await create_key(self.scaler, environment, service)
        return web.json_response(
            {"environment": environment, "service": service, "key": key}, status=201
        )
