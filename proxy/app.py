"""The data plane: route by Host → check access → forward, or hold while the instance wakes.

The hot path reads the current route table (an immutable snapshot swapped
atomically), never awaits the controller and takes no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.spec import EMPTY_TABLE, ProxySettings, Route, RouteTable

from . import access, ignore, policy
from .activator import ActivationFailed, Activator, HoldTimeout, QueueFull, RouteGone
from .activity import ActivityTracker
from .deadline import Deadline
from .errors import error_response, no_route, request_timeout, unauthorized, unavailable
from .fastpath import FastConnection
from .forward import Forwarder, NeedsWake, UpstreamError, declared_length, too_large
from .link import ControlLink
from .metrics import ProxyMetrics
from .policy import TrustedProxies
from .refusals import RefusedEndpoints
from .request_log import RequestLog
from .routing import normalize_host
from .targets import (
    ALLOWED_METHODS,
    SERVER_WIDE,
    TargetRefused,
    split_target,
    upstream_target,
)
from .upstreams import UpstreamPool
from .waking_page import waking_page, wants_page

log = logging.getLogger("wakegate.proxy")

_HTTP_1 = (HttpVersion10, HttpVersion11)
_AUTHORIZATION = frozenset((b"authorization",))
_EXPECT = frozenset((b"expect",))  # answered here: the upstream gets the body at once
_CONTINUED = "wakegate.continued"  # request[...]: `100 Continue` was sent (or not needed)
CLOSE_AT_ONCE = "wakegate.close"  # request[...]: close the connection once it is answered
_ADMIN_PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
RETRY_AFTER_QUEUE_FULL = 2
RETRY_AFTER_FAILED = 1  # the next request tries a new start at once
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
        # What the controller sent, and this proxy's view of it: the same table
        # without the endpoints seen refusing connections (refusals.py).
        self._given: RouteTable = EMPTY_TABLE
        self.table: RouteTable = EMPTY_TABLE
        # `connected`: split mode's link knows whether the controller answers.
        self.refusals = RefusedEndpoints(self._apply_view, settings.connect_timeout,
                                         lambda: bool(getattr(link, "connected", True)))
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
        if table.version < self._given.version:
            return  # a late, older table never replaces a newer one
        self._given = table
        self._apply_view()

    def _apply_view(self) -> None:
        self.table = self.refusals.view(self._given)
        self.activator.on_table(self.table)

    def endpoint_refused(self, route: Route, endpoint: str) -> None:
        """A connect to `endpoint` was refused: no request goes there until it accepts again."""
        self.refusals.refused(route.key, endpoint)

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
            max_headers=policy.MAX_FIELDS,  # the fast path hands more to this parser
            access_log=None,
            # aiohttp's own idle timer closes an idle keep-alive connection; the
            # header timeout (with its 408) is _ProxyRequestHandler's.
            keepalive_timeout=self.settings.keepalive_timeout,
            header_timeout=self.settings.header_timeout,
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
        self.refusals.close()
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
        # The fast path hands over a request it sent once already, whose upstream
        # died on it: it may wake the instance once, never twice. The mark is for
        # the first request of the connection only, however it is answered.
        protocol = request.protocol
        sent_once = getattr(protocol, "replayed", False)
        if sent_once:
            protocol.replayed = False  # type: ignore[attr-defined]
        if request.version not in _HTTP_1:
            return _wrong_version(request)
        if request.version == HttpVersion10 and "Transfer-Encoding" in request.headers:
            # HTTP/1.0 has no transfer codings: where such a body ends is not agreed
            # on (RFC 9112 §6.1), so nothing after it on the connection is believed.
            response = error_response(
                400, "bad_request", "Transfer-Encoding is not part of HTTP/1.0: send the "
                "request as HTTP/1.1, or with a Content-Length.")
            response.force_close()
            request[CLOSE_AT_ONCE] = True
            return response
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
        try:
            # Only the path (and query) of the target is used, and only the routed
            # instance's endpoints are connected to, whatever the target says.
            target = upstream_target(request.method, request.raw_path, route.host)
            response = await self._serve(request, route, target, started, sent_once)
        except TargetRefused as refused:
            response = error_response(
                refused.status, refused.code, refused.message, route,
                {"Allow": ALLOWED_METHODS} if refused.status == 405 else None)
            # Where such a request's body ends is not agreed on (an upstream or another
            # proxy ignores a CONNECT's Content-Length): nothing after it is believed.
            response.force_close()
            request[CLOSE_AT_ONCE] = True
        except asyncio.CancelledError:
            # The client went away (nginx's 499).
            self.request_done(route, 499, time.monotonic() - started, request.method,
                              request.path, request.remote or "", False)
            raise
        if "Expect" in request.headers and not request.get(_CONTINUED):
            # Refused before `100 Continue`: the client will not send its body, so
            # what would come next on this connection is not a request. Close it.
            response.force_close()
            request[CLOSE_AT_ONCE] = True
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
        self, request: web.BaseRequest, route: Route, target: str, started: float,
        sent_once: bool = False,
    ) -> web.StreamResponse:
        # wakegate's own credentials never reach a service, on any route (a
        # private key sent to a public host is not the public service's business).
        fields = request.raw_headers
        drop: frozenset[bytes] = frozenset()
        if route.access == "api_key":
            reason, in_authorization, matched = access.check(route, fields,
                                                             request.query_string)
            if reason is not None:
                self.metrics.of(route.key).auth_failed(reason)
                return unauthorized(route, access.FAILURE_MESSAGES[reason])
            self.activity.key_used(matched)  # for `wakegate keys list`
            if in_authorization:
                drop = drop | _AUTHORIZATION
        if target == SERVER_WIDE:
            # `OPTIONS *` asks about the server, not a resource: answered here,
            # without waking anything.
            return web.Response(status=200, headers={"Allow": ALLOWED_METHODS})
        expect = request.headers.get("Expect")
        if expect is not None:
            drop = drop | _EXPECT
            refused = await self._expect_continue(request, route, expect)
            if refused is not None:
                return refused
        try:
            headers = CIMultiDict(policy.as_text(policy.request_fields(
                fields, peer=request.remote or "", trusted=request.remote in self.trusted,
                scheme=request.scheme, drop=drop)))
        except UnicodeDecodeError:
            return error_response(
                400, "bad_header", "A header value is neither ASCII nor UTF-8: wakegate "
                "cannot pass it on unchanged. Send it encoded (e.g. RFC 8187).", route)
        path = unquote(split_target(target)[0], errors="surrogateescape")
        ignored = self.is_ignored(route, path, request.headers.get("User-Agent", ""))
        activity = None if ignored else self.activity.of(route.key)
        if activity is not None:
            activity.in_flight += 1
        try:
            extra: dict[str, str] | None = None
            # A request wakes an instance again at most once after it reached one
            # (NeedsWake below): never a crash loop for a request that kills it.
            rewoken = False
            if not route.endpoints:
                if route.backoff_until:
                    _refuse_in_backoff(route)
                if route.wake_strategy == "page" and not ignored and wants_page(request):
                    self.link.activate(route.key)
                    return waking_page(route)
                route, extra = await self._hold(route, started, ignored)
                rewoken = sent_once  # this wake was its one more
            is_websocket = request.headers.get("Upgrade", "").lower() == "websocket"
            key = route.key
            while True:
                try:
                    if is_websocket:
                        return await self.forwarder.websocket(
                            request, route, target, headers, extra,
                            lambda: self.table.by_key.get(key), self.endpoint_refused)
                    return await self.forwarder.forward(
                        request, route, target, headers, extra,
                        lambda: self.table.by_key.get(key), self.endpoint_refused,
                        self._release_gate(key) if extra is not None else None,
                    )
                except NeedsWake as wake:
                    # Every endpoint refused the connection: the instance died (or
                    # its controller did, taking it along). Held and woken as if it
                    # slept, but once only: never loop on a service that keeps dying.
                    if rewoken:
                        raise UpstreamError(
                            502, "upstream_reset",
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

    async def _expect_continue(self, request: web.BaseRequest, route: Route,
                               expect: str) -> web.Response | None:
        """`Expect: 100-continue`: the go-ahead once the request may be served, else why not.

        Sent after the access check (a client without a key got its 401 already,
        before sending a body) and before the instance is woken, so the body
        arrives while it starts, as nginx does. Other expectations get 417.
        """
        if expect.strip().lower() != "100-continue":
            return error_response(
                417, "expectation_failed",
                f"wakegate only understands `Expect: 100-continue`, not {expect[:40]!r}.", route)
        if declared_length(request) > self.settings.max_body_size:
            refused = too_large(self.settings.max_body_size)  # before the client sends it
            return error_response(refused.status, refused.code, refused.message, route)
        if request.version == HttpVersion11:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            request.writer.output_size = 0  # not part of the answer's size
        request[_CONTINUED] = True
        return None

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
            latest = self.table.by_key.get(route.key, route)
            if latest.backoff_until:
                _refuse_in_backoff(latest)
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
        compiled = ignore.rules(route.ignore_paths, route.ignore_user_agents)
        return compiled is not None and compiled.match(path, agent)

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


def _refuse_in_backoff(route: Route) -> None:
    """503 at once while the instance is in crash back-off: nothing is started meanwhile."""
    left = route.backoff_until - time.monotonic()
    if left > 0:
        raise _Reply(unavailable(
            route, "activation_failed",
            "The service failed to start several times in a row, so wakegate waits before "
            "trying again (crash back-off). Its owner can find why in `wakegate status` and "
            "the instance's log; retry after the Retry-After seconds.",
            math.ceil(left),
        ))


_VERSION_NOT_SUPPORTED = (
    505, "http_version_not_supported",
    "wakegate speaks HTTP/1.1 and HTTP/1.0 on this port: send the request as HTTP/1.1.")


def _wrong_version(request: web.BaseRequest) -> web.Response:
    """505 for a request that parsed but is neither HTTP/1.0 nor 1.1 (`GET / HTTP/2.0`)."""
    # aiohttp writes the request's own version in the status line; this answer
    # says HTTP/1.1, whatever the request claimed to be. (`version` is cached in
    # `_cache`, which is also how aiohttp's own `clone()` overrides a property.)
    request._cache["version"] = HttpVersion11
    response = error_response(*_VERSION_NOT_SUPPORTED)
    response.force_close()
    return response


class _ProxyRequestHandler(RequestHandler):
    """aiohttp's parser errors, answered as DESIGN.md's table says (431, 400, 505) in JSON;
    and the request header timeout aiohttp lacks (408)."""

    # Set by the fast path when it hands over a request it had already sent
    # once to an upstream that died on it (app.Proxy._serve).
    replayed = False
    # True once the connection had an answer (set by the fast path on a hand-off
    # after answers of its own): a late head is then closed without a 408.
    answered = False

    # --- proxy.header_timeout, which aiohttp lacks (nginx's client_header_timeout) ---
    #
    # A connection must send a whole request head within header_timeout of its
    # accept (first request) or of the first byte of its next head (later ones),
    # else it gets a 408 (nothing answered yet) or is just closed. One timer per
    # connection holds the deadline, re-armed lazily when it fires early. An idle
    # kept-alive connection is aiohttp's keep-alive timer's (keepalive_timeout).
    #
    # What this relies on in aiohttp (3.14), beyond the asyncio Protocol methods:
    # - the server's request handler runs for each request, on its own task,
    #   soon after its head was parsed (_ProxyWebServer wraps it to call
    #   request_started), and finish_response() is called once the response of
    #   each handled request was written (a parse error's too);
    # - aiohttp arms its keep-alive timer in connection_made and after each
    #   response kept alive, closes the connection when it fires only if no
    #   request is being handled, and keep_alive(True) cancels the armed one;
    # - transport (the client's) and force_close() (closes it, ends start()).
    # A request whose head was whole within about one loop iteration of the
    # deadline may still get the 408 (its handler had not started yet). A next
    # head that started while the previous request was handled and is not whole
    # when it ends is cut by the keep-alive timer, not this one.

    def __init__(self, manager: web.Server, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        # When the head awaited must be whole (`at` 0: none awaited: a request is
        # handled, or the connection idles and aiohttp's keep-alive timer has it).
        self._head_deadline = Deadline(self._head_timeout)
        self._handling = False
        self._kept_alive = True  # the last answer kept the connection alive

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # aiohttp's timer, armed on accept, would close a connection still sending
        # its first head silently at keepalive_timeout: the header clock has it.
        self.keep_alive(True)
        self._await_head()

    def connection_lost(self, exc: BaseException | None) -> None:
        super().connection_lost(exc)
        self._head_deadline.cancel()

    def data_received(self, data: bytes) -> None:
        if not self._head_deadline.at and not self._handling and data:
            # The first byte of the next head on a kept-alive connection: it is not
            # idle any more, so aiohttp's keep-alive timer stops and the header
            # clock starts. (keep_alive(True) also says "keep alive": only after an
            # answer that did.)
            if self._kept_alive:
                self.keep_alive(True)
            self._await_head()
        super().data_received(data)

    def request_started(self) -> None:
        """A request's head is whole and its handler runs: no timer closes it now."""
        self._handling = True
        self._head_deadline.clear()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            resp, reset = await super().finish_response(request, resp, start_time)
            self._kept_alive = bool(resp.keep_alive)
            if request.get(CLOSE_AT_ONCE):
                # Answered before a body the client holds back (`Expect`): aiohttp
                # would wait `lingering_time` for it. Closed once the answer is out.
                self.force_close()
            return resp, reset
        finally:
            self._handling = False
            self.answered = True

    def _await_head(self) -> None:
        self._head_deadline.set(time.monotonic() + self._header_timeout)

    def _head_timeout(self) -> None:
        transport = self.transport
        if transport is None or self._handling:
            return  # closed, or a request is handled: the next head sets it again
        if not self.answered:
            transport.write(request_timeout(self._header_timeout))
        self.force_close()

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
        elif isinstance(exc, BadStatusLine) and "HTTP version" in str(exc):
            status, code, text = _VERSION_NOT_SUPPORTED
            request._cache["version"] = HttpVersion11  # as _wrong_version: said as HTTP/1.1
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
    def __init__(
        self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], *,
        header_timeout: float, **kwargs: Any,
    ) -> None:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if isinstance(protocol, _ProxyRequestHandler):
                protocol.request_started()
            return await handler(request)

        super().__init__(handle, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return _ProxyRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                    **self._kwargs)
