"""The aiohttp path: every request the fast path does not serve, from its head to its answer.

Route by Host, check the request target and access, then forward to a ready
endpoint, or hold the request while its instance wakes (activator.py) and
forward it then. Held requests, private instances, WebSockets, streamed
bodies, `Expect`, the admin paths and every refusal of the status table are
answered here; the fast path (fastpath.py) hands such connections over.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from urllib.parse import unquote

from aiohttp import HttpVersion10, HttpVersion11, web
from multidict import CIMultiDict
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from controller.spec import Route

from . import access, policy
from .activator import ActivationFailed, Activator, HoldTimeout, QueueFull, RouteGone
from .context import ProxyContext
from .errors import (
    UpstreamError,
    error_response,
    no_route,
    unauthorized,
    unavailable,
)
from .forward import Forwarder, NeedsWake, declared_length, too_large
from .ignore import is_ignored
from .routing import normalize_host
from .server import CLOSE_AT_ONCE, wrong_version
from .targets import (
    ALLOWED_METHODS,
    SERVER_WIDE,
    TargetRefused,
    split_target,
    upstream_target,
)
from .waking_page import waking_page, wants_page
from .websocket import relay_websocket

_HTTP_1 = (HttpVersion10, HttpVersion11)
_AUTHORIZATION = frozenset((b"authorization",))
_EXPECT = frozenset((b"expect",))  # answered here: the upstream gets the body at once
_CONTINUED = "wakegate.continued"  # request[...]: `100 Continue` was sent (or not needed)
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


class AiohttpPath:
    """The handler of the aiohttp server (server.py): `handle` answers one request."""

    def __init__(self, context: ProxyContext, activator: Activator, forwarder: Forwarder,
                 activate: Callable[[tuple[str, str]], None],
                 registry: CollectorRegistry) -> None:
        self._context = context
        self._activator = activator
        self._forwarder = forwarder
        self._activate = activate  # asks the controller to wake an instance (ControlLink)
        self._registry = registry  # what /metrics shows
        # One gate per instance: how many held requests go to it at once (_Slot).
        self._gates: dict[tuple[str, str], asyncio.Semaphore] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        context = self._context
        # The fast path hands over a request it sent once already, whose upstream
        # died on it: it may wake the instance once, never twice. The mark is for
        # the first request of the connection only, however it is answered.
        protocol = request.protocol
        sent_once = getattr(protocol, "replayed", False)
        if sent_once:
            protocol.replayed = False  # type: ignore[attr-defined]
        if request.version not in _HTTP_1:
            return wrong_version(request)
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
        route = context.table.by_host.get(normalize_host(hosts[0]))
        if route is None:
            if request.path in _ADMIN_PATHS:
                return self._admin(request)
            return no_route(hosts[0])
        try:
            # Only the path (and query) of the target is used, and only the routed
            # instance's endpoints are connected to, whatever the target says.
            target = upstream_target(request.method, request.raw_path, route.host)
            response = await self.serve(request, route, target, started, sent_once)
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
            context.request_done(route, 499, time.monotonic() - started, request.method,
                                 request.path, request.remote or "", False)
            raise
        if "Expect" in request.headers and not request.get(_CONTINUED):
            # Refused before `100 Continue`: the client will not send its body, so
            # what would come next on this connection is not a request. Close it.
            response.force_close()
            request[CLOSE_AT_ONCE] = True
        context.request_done(route, response.status, time.monotonic() - started, request.method,
                             request.path, request.remote or "",
                             response.headers.get("X-Wakegate-Cold-Start") == "true")
        return response

    async def serve(
        self, request: web.BaseRequest, route: Route, target: str, started: float,
        sent_once: bool = False,
    ) -> web.StreamResponse:
        # wakegate's own credentials never reach a service, on any route (a
        # private key sent to a public host is not the public service's business).
        context = self._context
        fields = request.raw_headers
        drop: frozenset[bytes] = frozenset()
        if route.access == "api_key":
            reason, in_authorization, matched = access.check(route, fields,
                                                             request.query_string)
            if reason is not None:
                context.metrics.of(route.key).auth_failed(reason)
                return unauthorized(route, access.FAILURE_MESSAGES[reason])
            context.activity.key_used(matched)  # for `wakegate keys list`
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
                fields, peer=request.remote or "", trusted=request.remote in context.trusted,
                scheme=request.scheme, drop=drop)))
        except UnicodeDecodeError:
            return error_response(
                400, "bad_header", "A header value is neither ASCII nor UTF-8: wakegate "
                "cannot pass it on unchanged. Send it encoded (e.g. RFC 8187).", route)
        path = unquote(split_target(target)[0], errors="surrogateescape")
        ignored = is_ignored(route, path, request.headers.get("User-Agent", ""))
        activity = None if ignored else context.activity.of(route.key)
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
                    self._activate(route.key)
                    return waking_page(route)
                route, extra = await self._hold(route, started, ignored)
                rewoken = sent_once  # this wake was its one more
            is_websocket = request.headers.get("Upgrade", "").lower() == "websocket"
            key = route.key
            while True:
                try:
                    if is_websocket:
                        return await relay_websocket(
                            self._forwarder, request, route, target, headers, extra)
                    return await self._forwarder.forward(
                        request, route, target, headers, extra,
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
        limit = self._context.settings.max_body_size
        if declared_length(request) > limit:
            refused = too_large(limit)  # before the client sends it
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
            ready, waited = await self._activator.wait_ready(route, started)
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
            latest = self._context.table.by_key.get(route.key, route)
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

    def _admin(self, request: web.BaseRequest) -> web.Response:
        """/healthz, /readyz and /metrics: never touch an instance nor count as activity."""
        path = request.path
        if path == "/metrics":
            return web.Response(
                body=generate_latest(self._registry),
                headers={"Content-Type": CONTENT_TYPE_LATEST},
            )
        if path == "/readyz" and self._context.table.version == 0:
            return error_response(503, "not_ready", "The proxy has no route table yet.")
        return web.json_response({"status": "ok", "routes_version": self._context.table.version})


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
