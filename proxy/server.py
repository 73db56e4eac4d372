"""The aiohttp server of the proxy's port: its connection handler, as wakegate needs it.

Two things aiohttp lacks: its parser errors answered as the status table says
(431, 400, 505) in JSON (common/json_errors.py), and a request header timeout
with its 408 (proxy.header_timeout, nginx's client_header_timeout). The fast
path (fastpath.py) hands its connections to this server's handler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.http_exceptions import BadHttpMessage, BadStatusLine, LineTooLong
from aiohttp.web_protocol import RequestHandler

from common.json_errors import ErrorAnswer, JsonErrorHandler

from .deadline import Deadline
from .errors import error_response, request_timeout

log = logging.getLogger("wakegate.proxy")

CLOSE_AT_ONCE = "wakegate.close"  # request[...]: close the connection once it is answered
VERSION_NOT_SUPPORTED = (
    505, "http_version_not_supported",
    "wakegate speaks HTTP/1.1 and HTTP/1.0 on this port: send the request as HTTP/1.1.")


def wrong_version(request: web.BaseRequest) -> web.Response:
    """505 for a request that parsed but is neither HTTP/1.0 nor 1.1 (`GET / HTTP/2.0`)."""
    # aiohttp writes the request's own version in the status line; this answer
    # says HTTP/1.1, whatever the request claimed to be. (`version` is cached in
    # `_cache`, which is also how aiohttp's own `clone()` overrides a property.)
    request._cache["version"] = HttpVersion11
    response = error_response(*VERSION_NOT_SUPPORTED)
    response.force_close()
    return response


def take_over(server: Callable[[], asyncio.Protocol], transport: asyncio.Transport,
              unserved: bytes, *, answered: bool, replayed: bool, writing_paused: bool,
              reading_paused: bool) -> None:
    """A handler of `server` takes over a connection the fast path served until now.

    `unserved`: every byte not served yet, from the first byte of a request;
    `answered`: the connection had answers already (a late head gets no 408);
    `replayed`: its first request was sent upstream once already and its
    upstream died on it (it may wake the instance once more, not twice);
    `writing_paused`: the client is behind on reading;
    `reading_paused`: the fast path stopped reading this client.
    """
    handler = server()
    if answered:
        handler.answered = True  # type: ignore[attr-defined]
    if replayed:
        handler.replayed = True  # type: ignore[attr-defined]
    transport.set_protocol(handler)
    handler.connection_made(transport)
    if writing_paused:
        # aiohttp must know, or it buffers its answers without limit.
        handler.pause_writing()
    if reading_paused:
        # Before the bytes go in: aiohttp may pause reading itself while it takes them
        # (a large body, a full queue), and resuming after would undo its pause.
        transport.resume_reading()
    if unserved:
        handler.data_received(unserved)


class ProxyRequestHandler(JsonErrorHandler):
    """aiohttp's parser errors, answered as the status table says (431, 400, 505) in JSON;
    and the request header timeout aiohttp lacks (408)."""

    # Set by the fast path when it hands over a request it had already sent
    # once to an upstream that died on it (AiohttpPath.serve).
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
    #   soon after its head was parsed (ProxyWebServer wraps it to call
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

    def error_answer(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> ErrorAnswer:
        if isinstance(exc, LineTooLong) or (
            isinstance(exc, BadHttpMessage) and "header" in str(exc).lower()
            and ("too" in str(exc).lower() or "large" in str(exc).lower())
        ):
            return 431, "headers_too_large", "The request headers are too large."
        if isinstance(exc, BadStatusLine) and "HTTP version" in str(exc):
            request._cache["version"] = HttpVersion11  # as wrong_version: said as HTTP/1.1
            return VERSION_NOT_SUPPORTED
        if status == 400:
            return status, "bad_request", "The request is not valid HTTP/1.1."
        if status == 504:
            return status, "timeout", "The request took too long."
        log.error("error handling request", exc_info=exc)
        return status, "internal_error", "wakegate failed on this request; see its log."


class ProxyWebServer(web.Server):
    def __init__(
        self, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]], *,
        header_timeout: float, **kwargs: Any,
    ) -> None:
        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            protocol = request.protocol
            if isinstance(protocol, ProxyRequestHandler):
                protocol.request_started()
            return await handler(request)

        super().__init__(handle, **kwargs)
        self._header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return ProxyRequestHandler(self, loop=self._loop, header_timeout=self._header_timeout,
                                    **self._kwargs)
