"""Forwarding a request to one of an instance's ready endpoints.

Bodies stream both ways; upstream connections are kept alive in one pool.
The upstream URL is built from parts: the endpoint (from the route table)
and the origin-form target (targets.py), never from the raw request target.
A refused connect takes that endpoint out of the proxy's table (refusals.py)
and is retried on the next one; when none is left the request is held while
the instance wakes again (NeedsWake), never answered 502.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from controller.spec import ProxySettings, Route

from . import policy
from .refusals import accepts
from .targets import split_target

# Responses up to this size are read whole and sent in one write.
_BUFFER_LIMIT = 64 * 1024


# Told each endpoint that refused a connection (Proxy.endpoint_refused).
Refused = Callable[[Route, str], None]


class UpstreamError(Exception):
    """Nothing was sent to the client yet; answer with this status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of(cls, failure: tuple[int, str, str]) -> UpstreamError:
        """One of policy's upstream failures (RESET, INVALID, timed_out(...))."""
        return cls(*failure)


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

    async def __aenter__(self) -> _Slot:
        if self._gate is not None:
            await self._gate.acquire()
            self._held = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        if self._held and self._gate is not None:
            self._held = False
            self._gate.release()


class Forwarder:
    def __init__(self, settings: ProxySettings) -> None:
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None
        self._rr: dict[tuple[str, str], int] = {}
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

    async def close(self) -> None:
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()

    def pick(self, route: Route, attempt: int) -> str:
        """Round robin; `attempt` 1, 2, ...: the endpoints after the one attempt 0 took."""
        if len(route.endpoints) == 1:
            return route.endpoints[0]
        n = self._rr.get(route.key, 0)
        if attempt == 0:
            self._rr[route.key] = n + 1
            return route.endpoints[n % len(route.endpoints)]
        return route.endpoints[(n - 1 + attempt) % len(route.endpoints)]

    async def forward(
        self,
        request: web.BaseRequest,
        route: Route,
        target: str,
        headers: CIMultiDict[str],
        extra: dict[str, str] | None,
        current: Callable[[], Route | None],
        refused: Refused,
        gate: asyncio.Semaphore | None = None,
    ) -> web.StreamResponse:
        assert self._session is not None
        async with _Slot(gate) as slot:
            return await self._forward(request, route, target, headers, extra, current,
                                       refused, slot)

    async def _forward(
        self,
        request: web.BaseRequest,
        route: Route,
        target: str,
        headers: CIMultiDict[str],
        extra: dict[str, str] | None,
        current: Callable[[], Route | None],
        refused: Refused,
        slot: _Slot,
    ) -> web.StreamResponse:
        assert self._session is not None
        guard = _BodyGuard()
        body = self._body(request, guard)
        replayable = body is None and request.method in policy.IDEMPOTENT_METHODS
        fresh = False  # the next try goes on a new connection
        path, query = split_target(target)
        attempt = 0
        while True:
            endpoint = self.pick(route, attempt)
            url = upstream_url(endpoint, path, query)
            session = self._fresh if fresh else self._session
            assert session is not None
            try:
                upstream = await session.request(
                    request.method, url, headers=headers, data=body,
                    allow_redirects=False, compress=False,
                )
            except aiohttp.ClientConnectorError:
                # Refused: nothing of this try reached anyone. That endpoint is
                # out of the table now; try the next, or hold the request.
                refused(route, endpoint)
                route = _next_route(current, route, endpoint)
                attempt = 0
                continue
            except TimeoutError:
                raise UpstreamError.of(policy.timed_out(self._settings.connect_timeout,
                                                        self._settings.read_timeout)) from None
            except aiohttp.ClientConnectionError as exc:
                # The body stream's own limit surfaces wrapped by the client.
                if isinstance(exc.__cause__, BodyTooLarge) or guard.overflowed:
                    raise too_large(self._settings.max_body_size) from None
                # Reset before answering. A pooled keep-alive connection the
                # upstream just closed looks the same: an idempotent, body-less
                # request is tried again on a new connection. If even that one
                # breaks and nothing listens there any more, the replica is gone
                # (its controller may have died, taking it along): it is taken
                # out, and the request goes to the next one or is held while the
                # instance wakes. `Proxy._serve` lets a request wake an instance
                # again only once: a request that kills its service is never
                # replayed into a crash loop.
                if replayable:
                    if not fresh:
                        fresh = True
                        attempt += 1
                        continue
                    if await accepts(endpoint, self._settings.connect_timeout):
                        # It listens: it is this request it breaks on. Not sent again.
                        raise UpstreamError.of(policy.RESET) from None
                    refused(route, endpoint)
                    route = _next_route(current, route, endpoint)
                    attempt = 0
                    continue
                raise UpstreamError.of(policy.RESET) from None
            except aiohttp.ClientPayloadError:
                raise UpstreamError(
                    400, "bad_request_body", "The request body ended before its declared length."
                ) from None
            except aiohttp.ClientResponseError:
                # What came back is not HTTP ("Bad status line", a broken head).
                raise UpstreamError.of(policy.INVALID) from None
            slot.release()  # answered: the next held request may go
            guard.upstream = upstream
            if guard.overflowed:
                upstream.close()
            try:
                return await self._respond(request, upstream, extra)
            except UpstreamError:
                if guard.overflowed:
                    raise too_large(self._settings.max_body_size) from None
                raise

    def _body(self, request: web.BaseRequest, guard: _BodyGuard) -> AsyncIterator[bytes] | None:
        if not request.body_exists:
            return None
        limit = self._settings.max_body_size
        if declared_length(request) > limit:
            raise too_large(limit)
        return _limited(request.content, limit, guard)

    async def _respond(
        self,
        request: web.BaseRequest,
        upstream: aiohttp.ClientResponse,
        extra: dict[str, str] | None,
    ) -> web.StreamResponse:
        try:
            try:
                passed = policy.response_fields(upstream.raw_headers)[0]
            except ValueError:
                raise UpstreamError.of(policy.INVALID) from None
            # aiohttp frames the body itself (its Content-Length or chunked).
            headers = CIMultiDict(policy.as_text(
                (field for field in passed if field[0].lower() != b"content-length"),
                strict=False))
            if extra:
                headers.update(extra)
            reason = policy.reason_phrase(
                upstream.status, (upstream.reason or "").encode("utf-8", "surrogateescape")
            ).decode("utf-8", "replace")
            length = upstream.content_length
            no_body = request.method == "HEAD" or upstream.status in (204, 304)
            if request.method == "HEAD" and not policy.head_answer_reusable(
                    length, "Transfer-Encoding" in upstream.headers):
                _unpool(upstream)
            if not no_body and length is not None and length <= _BUFFER_LIMIT:
                try:
                    data = await upstream.read()
                except TimeoutError:
                    raise UpstreamError.of(policy.timed_out(
                        None, self._settings.read_timeout)) from None
                except aiohttp.ClientError:
                    raise UpstreamError.of(policy.BROKE_OFF) from None
                return web.Response(status=upstream.status, reason=reason, body=data,
                                    headers=headers)
            resp = web.StreamResponse(status=upstream.status, reason=reason, headers=headers)
            if length is not None:
                resp.content_length = length
            await resp.prepare(request)
            if not no_body:
                # Once the status line is out, an upstream failure can only
                # cut the response short, as the upstream did: close the
                # client connection so it sees a truncated answer, never one
                # that looks complete.
                try:
                    async for chunk in upstream.content.iter_any():
                        await resp.write(chunk)
                except (aiohttp.ClientError, TimeoutError):
                    _cut(request)
                    return resp
            await resp.write_eof()
            return resp
        finally:
            upstream.release()

    async def websocket(
        self,
        request: web.BaseRequest,
        route: Route,
        target: str,
        headers: CIMultiDict[str],
        extra: dict[str, str] | None,
        current: Callable[[], Route | None],
        refused: Refused,
    ) -> web.StreamResponse:
        """Open the upstream WebSocket first, so a refusal becomes an HTTP error."""
        assert self._session is not None
        offered = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        if not web.WebSocketResponse().can_prepare(request).ok:
            # Checked before anything is opened upstream: a broken handshake is the
            # client's, answered 400 here.
            raise UpstreamError(400, "bad_request",
                                "The WebSocket handshake is not valid (Sec-WebSocket-Key, "
                                "Sec-WebSocket-Version 13, GET).")
        for name in policy.WEBSOCKET_HANDSHAKE:
            headers.popall(name, None)
        path, query = split_target(target)
        while True:
            endpoint = self.pick(route, 0)
            try:
                up = await self._session.ws_connect(
                    upstream_url(endpoint, path, query), headers=headers, protocols=offered,
                    autoping=True, max_msg_size=0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5.0), receive_timeout=None,
                )
                break
            except aiohttp.WSServerHandshakeError as exc:
                raise UpstreamError(
                    exc.status if exc.status >= 400 else 502, "websocket_refused",
                    "The service refused the WebSocket upgrade.",
                ) from None
            except aiohttp.ClientConnectorError:
                refused(route, endpoint)
                route = _next_route(current, route, endpoint)
            except TimeoutError:
                raise UpstreamError.of(policy.timed_out(
                    self._settings.connect_timeout, self._settings.read_timeout)) from None
        ws = web.WebSocketResponse(
            protocols=(up.protocol,) if up.protocol else (), autoping=True, max_msg_size=0,
            heartbeat=None,
        )
        if extra:
            ws.headers.update(extra)
        try:
            await ws.prepare(request)
            await _pump_both_ways(ws, up)
        finally:
            await up.close()
            if ws.prepared and not ws.closed:
                await ws.close()
        return ws


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


def _next_route(current: Callable[[], Route | None], route: Route, endpoint: str) -> Route:
    """The route to try after `endpoint` refused; NeedsWake when it has no endpoint left."""
    latest = current()
    if latest is None:
        raise UpstreamError(404, "no_route", "This service was removed while the request waited.")
    if endpoint in latest.endpoints:
        # Not taken out (the table changed under us and the mark was dropped):
        # this request does not try it again.
        latest = dataclasses.replace(
            latest, endpoints=tuple(e for e in latest.endpoints if e != endpoint))
    if not latest.endpoints:
        raise NeedsWake(latest)
    return latest


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


def _unpool(upstream: aiohttp.ClientResponse) -> None:
    """Close the connection of an answer aiohttp has already put back in its pool.

    aiohttp pools the connection of an answer without a body (HEAD) as soon as
    its head is read, before `session.request` returns (with no await in
    between, so no other request took it yet); its pool skips a closed one.
    Relies on aiohttp 3.14's ClientResponse._protocol (pinned in pyproject)."""
    protocol = getattr(upstream, "_protocol", None)
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        transport.close()


def _cut(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


async def _pump_both_ways(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    async def copy(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                break
        # src closed: close the other side with the same code.
        code = src.close_code or aiohttp.WSCloseCode.OK
        await dst.close(code=code)

    tasks = [asyncio.ensure_future(copy(client, upstream)),
             asyncio.ensure_future(copy(upstream, client))]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await t
    finally:
        for t in tasks:
            t.cancel()

