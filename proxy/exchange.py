"""One request on the fast path, from its parsed head to the last byte of its answer.

An exchange sends the request on a pooled upstream connection (or a new one),
passes the answer back as llhttp reads it, and ends exactly once, through
`end()`, in one of five ways:

- DONE: the answer is complete; the upstream connection goes back to the pool
  if llhttp says it may be kept alive, and the next request of the client
  connection is served;
- FAILED: nothing of the answer went out: the client gets the status table's
  answer (502, 504) and the connection is closed;
- CUT: the answer started and cannot be completed: the client connection is
  aborted, so the client sees it truncated, never complete-looking;
- LEFT: the client went away first (nginx's 499);
- HANDED_OFF: nothing of it was answered: the aiohttp path takes the connection
  over, with the request (refused connects, replicas gone).

`end()` releases the upstream connection, stops counting the request as in
flight (for its instance, and on its endpoint for the balancer: the one place
an exchange's count ends), counts it in the metrics and the request log (all
but HANDED_OFF), then tells the client connection what to do.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from controller.spec import Route

from . import policy
from .context import ProxyContext
from .deadline import Deadline
from .refusals import accepts
from .upstreams import UpstreamConnection

DONE, FAILED, CUT, LEFT, HANDED_OFF = range(5)
_IDEMPOTENT = frozenset(method.encode() for method in policy.IDEMPOTENT_METHODS)
_CHUNKED_LINE = b"Transfer-Encoding: chunked\r\n"
_CLOSE_LINE = b"Connection: close\r\n"
_LAST_CHUNK = b"0\r\n\r\n"


class ClientSide(Protocol):
    """What an exchange uses of its client connection (fastpath.FastConnection)."""

    context: ProxyContext
    transport: asyncio.Transport | None
    peer: str
    read_timeout: float
    upstream_deadline: Deadline  # no byte from the upstream for read_timeout
    writing_paused: bool  # the client is not reading: upstream reading pauses
    closing: bool  # close once this answer is out (shutdown)

    def exchange_ended(self, exchange: Exchange, how: int, replayed: bool, now: float) -> None:
        """The exchange ended `how` (DONE, FAILED, ...): what the connection does next."""


class Exchange:
    __slots__ = ("_answered", "_chunked", "_connecting", "_on_fresh", "_out", "_retry_ok",
                 "close_after", "conn", "consumed", "counted", "counts", "ended", "endpoint",
                 "failure", "head_only", "method", "path", "request", "route", "started",
                 "status", "until_close", "up")

    def __init__(self, conn: ClientSide, route: Route, method: bytes, path: bytes,
                 request: bytes, consumed: int, keep_alive: bool, counts: bool) -> None:
        self.conn = conn
        self.route = route
        self.method = method
        self.path = path
        self.request = request  # the head and body as sent upstream
        self.consumed = consumed  # bytes of the client's buffer this request took
        self.close_after = not keep_alive  # close the client connection once answered
        self.counts = counts  # in its instance's activity (False: an ignored path or agent)
        self.counted: Any = None  # the InstanceActivity it counts in, from start to end
        self.endpoint: str | None = None  # where it is sent, in flight in the balancer
        self.head_only = method == b"HEAD"
        # An idempotent request without a body is sent again once, on a new connection,
        # when a pooled connection breaks before answering (policy.IDEMPOTENT_METHODS).
        self._retry_ok = False
        self._on_fresh = False  # on the new connection of that one retry
        self.started = time.monotonic()
        self.status = 0
        self._answered = False  # something of the answer went out: no status-table one now
        self.ended = False
        self.until_close = False
        self._chunked = False
        self._out: list[bytes] = []  # what this read of the upstream sends to the client
        self.failure: tuple[int, str, str] | None = None  # the status-table answer (FAILED)
        self.up: UpstreamConnection | None = None
        self._connecting: asyncio.Future[None] | None = None

    def start(self, body: bytes) -> None:
        """Send the request (its head is self.request) with `body`."""
        if body:
            self.request += body
        self._retry_ok = not body and self.method in _IDEMPOTENT
        context = self.conn.context
        if self.counts:
            # Looked up now, not at admission: a table without the route, while the body
            # was coming, may have dropped an idle entry (ActivityTracker.forget_all_but).
            counted = self.counted = context.activity.of(self.route.key)
            counted.in_flight += 1
        endpoint = self.endpoint = context.balancer.take(self.route)
        up = context.upstreams.take(endpoint)
        if up is not None:
            self._send(up)
        else:
            self._connecting = asyncio.ensure_future(self._connect_and_send(endpoint, True))

    # --- sending ---

    async def _connect_and_send(self, endpoint: str, first: bool) -> None:
        context = self.conn.context
        try:
            up: UpstreamConnection | None = await context.upstreams.connect(endpoint)
        except (OSError, TimeoutError):
            up = None
        if self.ended:
            if up is not None:
                up.close()
            return
        if up is not None and (up.closed or up.transport is None
                               or up.transport.is_closing()):
            # Accepted and closed at once (a pod shutting down, a server at its
            # limit) before anything was written: as a refused connect.
            up.close()
            up = None
        if up is not None:
            self._send(up)
            return
        # Refused: that endpoint is out of the table (refusals.py). The aiohttp path
        # tries the next one or holds the request while the instance wakes. A request
        # sent before (its upstream then died) is marked so: it may wake the instance
        # once more, never loop into another crash.
        context.endpoint_refused(self.route, endpoint)
        self.end(HANDED_OFF, replayed=not first)

    def _send(self, up: UpstreamConnection) -> None:
        self.up = up
        up.owner = self
        conn = self.conn
        conn.upstream_deadline.set(time.monotonic() + conn.read_timeout)
        transport = up.transport
        assert transport is not None
        try:
            if conn.writing_paused:
                # The client still has not read the last answers: this one waits too,
                # or a client that pipelines without reading would be buffered here
                # without limit.
                transport.pause_reading()
            transport.write(self.request)
        except RuntimeError:
            # The connection closed under us (uvloop raises on a closed handle).
            up.close()
            self.upstream_lost()

    # --- the answer, as llhttp reads it (upstreams.Reader) ---

    def response_head(self, status: int, reason: bytes, fields: policy.Fields) -> None:
        try:
            passed, length, chunked = policy.response_fields(fields)
        except ValueError:
            self.response_invalid()
            return
        self.status = status
        head = [b"HTTP/1.1 %d %s\r\n" % (status, policy.reason_phrase(status, reason)),
                policy.render(passed)]
        if self.head_only or status in (204, 304):
            # No body follows, whatever the head says of its length; llhttp does not
            # know this answer is to HEAD: the connection reads its next one afresh.
            assert self.up is not None
            self.up.end_answer()
            if self.head_only and not policy.head_answer_reusable(length, chunked):
                self.up.no_reuse()
        elif chunked:
            self._chunked = True
            head.append(_CHUNKED_LINE)
        elif length is None:
            self.until_close = True  # the end of the body is the end of the connection
        if self.until_close or self.close_after or self.conn.closing:
            self.close_after = True
            head.append(_CLOSE_LINE)
        head.append(b"\r\n")
        self._out += head

    def response_body(self, data: bytes) -> None:
        if self._chunked:
            self._out += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self._out.append(data)

    def response_read(self) -> None:
        """One read of the upstream went through llhttp: pass on what it gave."""
        conn = self.conn
        up = self.up
        complete = up is not None and up.complete
        if complete and self._chunked:
            self._out.append(_LAST_CHUNK)  # trailers are not passed on (nor by aiohttp)
        if self._out:
            transport = conn.transport
            if transport is not None:
                transport.write(b"".join(self._out))
            self._out.clear()
            self._answered = True
        if complete:
            self.end(DONE)
        elif not self.ended:
            conn.upstream_deadline.set(time.monotonic() + conn.read_timeout)

    def response_invalid(self) -> None:
        """llhttp refused the answer (or its framing is one we do not pass on)."""
        self._out.clear()
        if self._answered:
            self.end(CUT)
        else:
            self.fail(policy.INVALID)  # nothing of it went out: the client gets a 502

    def upstream_lost(self) -> None:
        """The upstream closed or reset its connection while this exchange used it."""
        up, self.up = self.up, None
        if up is not None:
            up.owner = None
        if self.ended:
            return
        if self._answered:
            if self.until_close:
                self.end(DONE)  # the close is the end of this answer
            else:
                self.end(CUT)
            return
        if self._retry_ok:
            # A pooled keep-alive connection the upstream just closed looks the same
            # as a reset: an idempotent, body-less request is sent again once, on a
            # new connection.
            self._retry_ok = False
            self._on_fresh = True
            balancer = self.conn.context.balancer
            tried = self.endpoint
            assert tried is not None
            balancer.release(tried)
            endpoint = self.endpoint = balancer.take_other(self.route, tried)
            self._connecting = asyncio.ensure_future(self._connect_and_send(endpoint, False))
            return
        if self._on_fresh and up is not None:
            # Even a new connection broke before an answer: is the replica gone?
            self._connecting = asyncio.ensure_future(self._after_fresh_reset(up.endpoint))
            return
        self.fail(policy.RESET)

    async def _after_fresh_reset(self, endpoint: str) -> None:
        """The retry on a new connection broke too: 502 if the replica still listens (it
        is this request it breaks on), else it is gone (its controller may have died,
        taking it along): out of the table, and the aiohttp path tries the next one or
        holds the request while the instance wakes."""
        context = self.conn.context
        alive = await accepts(endpoint, context.settings.connect_timeout)
        if self.ended:
            return  # the client left meanwhile
        if alive:
            self.fail(policy.RESET)
            return
        context.endpoint_refused(self.route, endpoint)
        self.end(HANDED_OFF, replayed=True)

    def timed_out(self) -> None:
        """No byte from the upstream for read_timeout."""
        if self._answered:
            self.end(CUT)
        else:
            self.fail(policy.timed_out(None, self.conn.read_timeout))

    def fail(self, failure: tuple[int, str, str]) -> None:
        """An answer of the status table, before anything of the upstream's went out."""
        self.failure = failure
        self.end(FAILED, failure[0])

    # --- the end ---

    def end(self, how: int, status: int = 0, replayed: bool = False) -> None:
        """The one way an exchange ends (see the module's docstring)."""
        if self.ended:
            return
        self.ended = True
        up, self.up = self.up, None
        if up is not None:
            up.owner = None
            if how == DONE and up.reusable:
                if self.conn.writing_paused and up.transport is not None:
                    # Paused for this client only: a connection given back paused would
                    # leave the next exchange on it unread, to end in a 504 after
                    # read_timeout, on someone else's request.
                    up.transport.resume_reading()
                up.next_answer(fresh_parser=self.head_only)
                self.conn.context.upstreams.give_back(up)
            else:
                up.close()
        connecting = self._connecting
        if connecting is not None and not connecting.done() and \
                connecting is not asyncio.current_task():
            connecting.cancel()  # the client left while a connect was under way
        self._connecting = None
        conn = self.conn
        endpoint = self.endpoint
        if endpoint is not None:
            self.endpoint = None
            conn.context.balancer.release(endpoint)
        now = time.monotonic()
        counted = self.counted
        if counted is not None:
            counted.in_flight -= 1
            if how != HANDED_OFF:
                counted.last_end = now
            self.counted = None
        if how != HANDED_OFF:
            conn.context.request_done(self.route, 499 if how == LEFT else status or self.status,
                                      now - self.started, self.method, self.path, conn.peer,
                                      False)
        conn.exchange_ended(self, how, replayed, now)
