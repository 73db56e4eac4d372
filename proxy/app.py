"""The data plane: route by Host → check access → forward, or hold while the instance wakes.

The hot path reads the current route table (an immutable snapshot swapped
atomically), never awaits the controller and takes no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.web_protocol import RequestHandler
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.spec import EMPTY_TABLE, ProxySettings, Route, RouteTable

from . import access
from .activator import ActivationFailed, Activator, HoldTimeout, QueueFull, RouteGone
from .activity import ActivityTracker
from .errors import error_response, no_route, unauthorized, unavailable
from .fastpath import FastConnection, UpstreamPool
from .forward import Forwarder, NeedsWake, UpstreamError
from .headers import TrustedProxies, upstream_request_headers
from .link import ControlLink
from .metrics import ProxyMetrics
from .request_log import RequestLog
from .routing import absolute_target_host, normalize_host, origin_form
from .waking_page import waking_page, wants_page

log = logging.getLogger("wakegate.proxy")

_DROP_KEY = frozenset(("x-api-key",))
_DROP_KEY_AND_AUTH = frozenset(("x-api-key", "authorization"))
_ADMIN_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
RETRY_AFTER_QUEUE_FULL = 2
RETRY_AFTER_FAILED = 5
RETRY_AFTER_SLEEPING = 30
RELEASE_AT_ONCE = 128  # held requests connecting to a woken instance at the same time


class _Reply(Exception):
    """A finished error response from deep inside the request's handling."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


class Proxy:
    def __init__(
        self, settings: ProxySettings, link: ControlLink, registry: CollectorRegistry,
        request_log: RequestLog | None = None,
    ) -> None:
        self.settings = settings
        self.link = link
        self.registry = registry
        self.table: RouteTable = EMPTY_TABLE
        self.activity = ActivityTracker()
        self.metrics = ProxyMetrics(self._in_flight_counts, self._held_counts)
        self.activator = Activator(link, self.metrics)
        registry.register(self.metrics)
        self.forwarder = Forwarder(settings)
        self.trusted = TrustedProxies(settings.trusted_proxies)
        # The warm path for simple requests (fastpath.py); WAKEGATE_FAST_PATH=0
        # sends every request through aiohttp, to compare or to rule it out.
        self.fast_path = os.environ.get("WAKEGATE_FAST_PATH", "1") != "0"
        self.upstreams = UpstreamPool(settings.connect_timeout)
        self.fast_connections: set[FastConnection] = set()
        self._gates: dict[tuple[str, str], asyncio.Semaphore] = {}
        connected = getattr(link, "connected", None)
        if connected is not None:
            # Split mode: wakegate_controller_connected on this proxy's /metrics.
            self.metrics.controller_connected = lambda: bool(link.connected)  # type: ignore[attr-defined]
        self.request_log: RequestLog | None = request_log
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.port: int | None = None

    # --- the control side ---

    def apply_table(self, table: RouteTable) -> None:
        if table.version < self.table.version:
            return  # a late, older table never replaces a newer one
        self.table = table
        self.activator.on_table(table)

    def _in_flight_counts(self) -> dict[tuple[str, str], int]:
        return {k: a.in_flight for k, a in self.activity.instances.items()}

    def _held_counts(self) -> dict[tuple[str, str], int]:
        return self.activator.held_counts()

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        await self.forwarder.start()
        await self.link.start(self.apply_table, self.activity)
        server = _ProxyWebServer(
            self.handle,
            handler_cancellation=True,  # a held client that leaves is removed at once
            max_line_size=self.settings.max_header_size,
            max_field_size=self.settings.max_header_size,
            access_log=None,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        slow = self._runner.server
        assert slow is not None
        factory = (lambda: FastConnection(self, slow)) if self.fast_path else slow
        self._listener = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_port=reuse_port or None, backlog=4096)
        sockets = self._listener.sockets or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        # Idle fast-path connections close now; one with a request in flight
        # closes when it is answered, or at the aiohttp path's deadline.
        for conn in list(self.fast_connections):
            conn.close_if_idle()
        deadline = time.monotonic() + 2.0
        while any(c.busy for c in self.fast_connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(self.fast_connections):
            conn.abort()
        if self._runner is not None:
            await self._runner.cleanup()
        self.upstreams.close()
        if self.request_log is not None:
            self.request_log.flush()
        await self.link.close()
        await self.forwarder.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.wait_closed()

    # --- the data path ---

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        hosts = request.headers.getall("Host", ())
        if len(hosts) != 1:
            if not hosts and request.path in _ADMIN_PATHS:
                return self._admin(request)
            return error_response(
                400, "bad_host", "Send exactly one Host header naming the service to call."
            )
        route = self.table.by_host.get(normalize_host(hosts[0]))
        if route is None:
            if request.path in _ADMIN_PATHS:
                return self._admin(request)
            return no_route(hosts[0])
        target = request.raw_path
        absolute_host = absolute_target_host(target)
        if absolute_host is not None:
            # The Host header picked the route; a target naming another host
            # is refused rather than believed.
            if absolute_host != route.host:
                return error_response(
                    400, "ambiguous_host",
                    "The request target names a different host than the Host header.", route,
                )
            target = origin_form(target)
        try:
            response = await self._serve(request, route, target, started)
        except asyncio.CancelledError:
            # The client went away (nginx's 499).
            self.request_done(route, 499, time.monotonic() - started, request.method,
                              request.path, request.remote or "", False)
            raise
        self.request_done(route, response.status, time.monotonic() - started, request.method,
                          request.path, request.remote or "",
                          response.headers.get("X-Wakegate-Cold-Start") == "true")
        return response

    def request_done(self, route: Route, status: int, seconds: float, method: str | bytes,
                     path: str | bytes, client: str, cold: bool) -> None:
        """Counted in the metrics, and one line in the request log (both paths end here)."""
        self.metrics.of(route.key).request_done(status, seconds)
        if self.request_log is not None:
            self.request_log.write(route, status, seconds, method, path, client, cold)

    async def _serve(
        self, request: web.BaseRequest, route: Route, target: str, started: float
    ) -> web.StreamResponse:
        drop: frozenset[str] = frozenset()
        if route.access == "api_key":
            reason, in_authorization = access.check(route, request.headers, request.query_string)
            if reason is not None:
                self.metrics.of(route.key).auth_failed(reason)
                return unauthorized(route, access.FAILURE_MESSAGES[reason])
            drop = _DROP_KEY_AND_AUTH if in_authorization else _DROP_KEY
        ignored = self.is_ignored(route, request.path, request.headers.get("User-Agent", ""))
        activity = None if ignored else self.activity.of(route.key)
        if activity is not None:
            activity.in_flight += 1
        try:
            extra: dict[str, str] | None = None
            if not route.endpoints:
                if route.wake_strategy == "page" and not ignored and wants_page(request):
                    self.link.activate(route.key)
                    return waking_page(route)
                route, extra = await self._hold(route, started, ignored)
            headers = upstream_request_headers(
                request.headers,
                peer=request.remote,
                trusted=request.remote in self.trusted,
                scheme=request.scheme,
                drop=drop,
            )
            is_websocket = request.headers.get("Upgrade", "").lower() == "websocket"
            key = route.key
            rewoken = False
            while True:
                try:
                    if is_websocket:
                        return await self.forwarder.websocket(request, route, target, headers,
                                                              extra)
                    return await self.forwarder.forward(
                        request, route, target, headers, extra,
                        lambda: self.table.by_key.get(key),
                        self._release_gate(key) if extra is not None else None,
                    )
                except NeedsWake as wake:
                    # The instance died before this request reached it: wake it
                    # once more, but never loop on a service that keeps dying.
                    if rewoken:
                        raise UpstreamError(
                            502, "upstream_unreachable",
                            "The service stopped again right after it started; its owner "
                            "can find why in the instance's log.",
                        ) from None
                    rewoken = True
                    route, extra = await self._hold(wake.route, started, ignored)
        except _Reply as reply:
            return reply.response
        except UpstreamError as exc:
            return error_response(exc.status, exc.code, exc.message, route)
        finally:
            if activity is not None:
                activity.in_flight -= 1
                activity.last_end = time.monotonic()

    def _release_gate(self, key: tuple[str, str]) -> asyncio.Semaphore:
        """How many requests held for one instance may be on their way to it at once."""
        gate = self._gates.get(key)
        if gate is None:
            gate = self._gates[key] = asyncio.Semaphore(RELEASE_AT_ONCE)
        return gate

    async def _hold(
        self, route: Route, started: float, ignored: bool
    ) -> tuple[Route, dict[str, str]]:
        if ignored:
            raise _Reply(unavailable(
                route, "sleeping",
                "The service is asleep and this request does not wake it "
                "(its path or User-Agent is in activity.ignore_paths/ignore_user_agents).",
                RETRY_AFTER_SLEEPING,
            ))
        try:
            ready, waited = await self.activator.wait_ready(route, started)
        except QueueFull:
            raise _Reply(unavailable(
                route, "hold_queue_full",
                f"The service is waking up and {route.hold_queue_size} requests already wait "
                "for it: retry after the Retry-After seconds.",
                RETRY_AFTER_QUEUE_FULL,
            )) from None
        except HoldTimeout:
            raise _Reply(error_response(
                504, "wake_timeout",
                f"The service did not become ready within {route.hold_timeout:g}s. "
                "It may still be starting: try again shortly.",
                route,
            )) from None
        except ActivationFailed:
            raise _Reply(unavailable(
                route, "activation_failed",
                "The service failed to start. Its owner can find why in `wakegate status` "
                "and the instance's log; retry after the Retry-After seconds.",
                RETRY_AFTER_FAILED,
            )) from None
        except RouteGone:
            raise _Reply(error_response(
                404, "no_route", "This service was removed while the request waited.", route
            )) from None
        return ready, {
            "X-Wakegate-Cold-Start": "true",
            "Server-Timing": f"coldstart;dur={waited * 1000:.1f}",
        }

    @staticmethod
    def is_ignored(route: Route, path: str, agent: str) -> bool:
        """A request that neither wakes the instance nor counts as its activity."""
        if route.ignore_paths:
            for pattern in route.ignore_paths:
                if pattern.endswith("*"):
                    if path.startswith(pattern[:-1]):
                        return True
                elif path == pattern:
                    return True
        if route.ignore_user_agents and agent:
            agent = agent.lower()
            for needle in route.ignore_user_agents:
                if needle.lower() in agent:
                    return True
        return False

    def _admin(self, request: web.BaseRequest) -> web.Response:
        """/healthz, /readyz and /metrics: never touch an instance nor count as activity."""
        path = request.path
        if path == "/metrics":
            return web.Response(
                body=generate_latest(self.registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )
        if path == "/readyz" and self.table.version == 0:
            return error_response(503, "not_ready", "The proxy has no route table yet.")
        return web.json_response({"status": "ok", "routes_version": self.table.version})


class _ProxyRequestHandler(RequestHandler):
    """aiohttp's parser errors, answered as DESIGN.md's table says (431, 400) in JSON."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "header" in str(exc).lower()
            and ("too" in str(exc).lower() or "large" in str(exc).lower())
        ):
            status, code, text = 431, "headers_too_large", "The request headers are too large."
        elif status == 400:
            code, text = "bad_request", "The request is not valid HTTP/1.1."
        elif status == 504:
            code, text = "timeout", "The request took too long."
        else:
            log.error("error handling request", exc_info=exc)
            code, text = "internal_error", "wakegate failed on this request; see its log."
        resp = web.Response(
            status=status,
            body=json.dumps({"error": code, "message": text}).encode() + b"\n",
            content_type="application/json",
        )
        resp.force_close()
        return resp


class _ProxyWebServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _ProxyRequestHandler(self, loop=self._loop, **self._kwargs)
