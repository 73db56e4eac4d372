"""Forwarding a request to one of an instance's ready endpoints (the aiohttp path).

Bodies stream both ways; upstream connections are kept alive in one pool.
The upstream URL is built from parts: the endpoint (from the route table)
and the origin-form target (targets.py), never from the raw request target.
A refused connect takes that endpoint out of the proxy's table (refusals.py)
and is retried on the next one; when none is left the request is held while
the instance wakes again (NeedsWake), never answered 502. The endpoint is the
balancer's choice (balancer.py), counted in flight there until the answer's
last byte or the try's end. The answer goes back through respond.py;
WebSockets are relayed by websocket.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from controller.spec import Route

from . import policy
from .balancer import LeastOutstanding
from .context import ProxyContext
from .errors import UpstreamError
from .refusals import accepts
from .respond import respond
from .targets import split_target


class NeedsWake(Exception):
    """No endpoint of the instance accepts connections: hold the request while it wakes."""

    def __init__(self, route: Route) -> None:
        super().__init__(route.service)
        self.route = route


class BodyTooLarge(Exception):
    pass


class _BodyGuard:
    """Cuts the upstream exchange when a streamed body passes the limit late.

    Before the upstream answers, the overflow surfaces as a failed request
    (413). After it answered, the upstream waits for the rest of a body that
    will never come: closing its connection is the only way to end that.
    """

    __slots__ = ("overflowed", "upstream")

    def __init__(self) -> None:
        self.overflowed = False
        self.upstream: aiohttp.ClientResponse | None = None

    def overflow(self) -> None:
        self.overflowed = True
        if self.upstream is not None:
            self.upstream.close()


class _Slot:
    """A place among the held requests released at once, given back at the first byte.

    When an instance wakes, every request held for it goes at once: thousands
    of connects in one moment would starve the event loop until the connect
    timeouts fire. A slot is held only until the upstream answers, so a long
    response or stream never keeps another request waiting.
    """

    __slots__ = ("_gate", "_held")

    def __init__(self, gate: asyncio.Semaphore | None) -> None:
        self._gate = gate
        self._held = False

    async def acquire(self) -> None:
        if self._gate is not None:
            await self._gate.acquire()
            self._held = True

    def release(self) -> None:
        if self._held and self._gate is not None:
            self._held = False
            self._gate.release()


class Forwarder:
    def __init__(self, context: ProxyContext) -> None:
        self._context = context
        self.settings = settings = context.settings
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )

    async def start(self) -> None:
        self._session = self._new_session(aiohttp.TCPConnector(
            limit=0,  # bounded by the clients, not by a pool that would queue them
            keepalive_timeout=30,
            enable_cleanup_closed=False,
            use_dns_cache=True,
        ))
        # The retry after a reset goes on a new connection: the pool may hold
        # more connections to a replica that just died, and a retry on one of
        # them would fail the same way instead of learning that it is gone.
        self._fresh = self._new_session(aiohttp.TCPConnector(limit=0, force_close=True))

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._timeout,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        )
        # aiohttp silently resends an idempotent request once when a pooled
        # connection breaks, and then reports only the second failure. We do
        # that retry ourselves (on a new connection). aiohttp's own test client
        # turns it off the same way; there is no public switch.
        session._retry_connection = False
        return session

    @property
    def session(self) -> aiohttp.ClientSession:
        """The pooled session (once started)."""
        assert self._session is not None
        return self._session

    @property
    def balancer(self) -> LeastOutstanding:
        """Which endpoint a request goes to, and how many are in flight on each."""
        return self._context.balancer

    async def close(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    def refused(self, route: Route, endpoint: str) -> Route:
        """`endpoint` refused the connection (nothing of the request reached anyone): it is
        out of the table now. The route to try next; NeedsWake when it has no endpoint left."""
        context = self._context
        context.endpoint_refused(route, endpoint)
        latest = context.current(route.key)
        if latest is None:
            raise UpstreamError(404, "no_route",
                                "This service was removed while the request waited.")
        if endpoint in latest.endpoints:
            # Not taken out (the table changed under us and the mark was dropped):
            # this request does not try it again.
            latest = dataclasses.replace(
                latest, endpoints=tuple(e for e in latest.endpoints if e != endpoint))
        if not latest.endpoints:
            raise NeedsWake(latest)
        return latest

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        target: str,
        headers: CIMultiDict[str],
        extra: dict[str, str] | None,
        gate: asyncio.Semaphore | None = None,
    ) -> web.StreamResponse:
        """The upstream's answer to `request`, sent to `route`'s endpoints; `gate`: the held
        requests released at once (_Slot)."""
        assert self._session is not None
        settings = self.settings
        slot = _Slot(gate)
        await slot.acquire()
        try:
            guard = _BodyGuard()
            body = self._body(request, guard)
            replayable = body is None and request.method in policy.IDEMPOTENT_METHODS
            fresh = False  # the next try goes on a new connection
            path, query = split_target(target)
            balancer = self._context.balancer
            tried: str | None = None  # the endpoint a replayable request broke on
            while True:
                # Counted on its endpoint from here to the end of its answer, or of this
                # try: a retry goes elsewhere if it can (the one it broke on, released).
                endpoint = (balancer.take(route) if tried is None
                            else balancer.take_other(route, tried))
                try:
                    url = upstream_url(endpoint, path, query)
                    session = self._fresh if fresh else self._session
                    assert session is not None
                    try:
                        upstream = await session.request(
                            request.method, url, headers=headers, data=body,
                            allow_redirects=False, compress=False,
                        )
                    except aiohttp.ClientConnectorError:
                        # Refused: nothing of this try reached anyone. Try the next
                        # endpoint, or hold the request.
                        route = self.refused(route, endpoint)
                        tried = None
                        continue
                    except TimeoutError:
                        raise UpstreamError.of(policy.timed_out(settings.connect_timeout,
                                                                settings.read_timeout)) from None
                    except aiohttp.ClientConnectionError as exc:
                        # The body stream's own limit surfaces wrapped by the client.
                        if isinstance(exc.__cause__, BodyTooLarge) or guard.overflowed:
                            raise too_large(settings.max_body_size) from None
                        # Reset before answering. A pooled keep-alive connection the
                        # upstream just closed looks the same: an idempotent, body-less
                        # request is tried again on a new connection. If even that one
                        # breaks and nothing listens there any more, the replica is gone
                        # (its controller may have died, taking it along): it is taken
                        # out, and the request goes to the next one or is held while the
                        # instance wakes. `AiohttpPath.serve` lets a request wake an
                        # instance again only once: a request that kills its service is
                        # never replayed into a crash loop.
                        if replayable:
                            if not fresh:
                                fresh = True
                                tried = endpoint
                                continue
                            if await accepts(endpoint, settings.connect_timeout):
                                # It listens: it is this request it breaks on. Not sent again.
                                raise UpstreamError.of(policy.RESET) from None
                            route = self.refused(route, endpoint)
                            tried = None
                            continue
                        raise UpstreamError.of(policy.RESET) from None
                    except aiohttp.ClientPayloadError:
                        raise UpstreamError(
                            400, "bad_request_body",
                            "The request body ended before its declared length.") from None
                    except aiohttp.ClientResponseError:
                        # What came back is not HTTP ("Bad status line", a broken head).
                        raise UpstreamError.of(policy.INVALID) from None
                    slot.release()  # answered: the next held request may go
                    guard.upstream = upstream
                    if guard.overflowed:
                        upstream.close()
                    try:
                        return await respond(request, upstream, extra, settings.read_timeout)
                    except UpstreamError:
                        if guard.overflowed:
                            raise too_large(settings.max_body_size) from None
                        raise
                finally:
                    balancer.release(endpoint)
        finally:
            slot.release()

    def _body(self, request: web.BaseRequest, guard: _BodyGuard) -> AsyncIterator[bytes] | None:
        if not request.body_exists:
            return None
        limit = self.settings.max_body_size
        if declared_length(request) > limit:
            raise too_large(limit)
        return _limited(request.content, limit, guard)


def declared_length(request: web.BaseRequest) -> int:
    """The Content-Length the client declared (0 if none), never more than 10**18.

    aiohttp's `content_length` is int() of the header, which refuses more than
    4300 digits with a ValueError: a client must not be able to cause that.
    """
    raw = request.headers.get("Content-Length", "").strip()
    if not raw.isdigit():
        return 0  # none (a malformed one never gets past the parser)
    return int(raw) if len(raw) <= 18 else 10**18


def upstream_url(endpoint: str, path: str, query: str) -> URL:
    """http://endpoint/path?query, from its parts: the endpoint alone says where it goes."""
    return URL.build(scheme="http", authority=endpoint, path=path, query_string=query,
                     encoded=True)


async def _limited(
    stream: aiohttp.StreamReader, limit: int, guard: _BodyGuard
) -> AsyncIterator[bytes]:
    seen = 0
    async for chunk in stream.iter_any():
        seen += len(chunk)
        if seen > limit:
            guard.overflow()
            raise BodyTooLarge
        yield chunk


def too_large(limit: int) -> UpstreamError:
    return UpstreamError(413, "body_too_large", f"The request body is larger than {limit} bytes.")
