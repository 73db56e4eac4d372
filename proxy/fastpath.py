"""The warm path at the protocol level: simple requests to ready public instances.

Most requests a proxy sees are plain: HTTP/1.1, one Host naming a public
instance that has ready endpoints, no upgrade, a small body or none. For
those, going through aiohttp's request objects and its client costs more
CPU than the forwarding itself. This module serves them with one asyncio
protocol per client connection: the request is parsed by httptools (llhttp,
the parser of Node.js and, through its own binding, of aiohttp), its fields
pass through the same rules as on the aiohttp path (policy.py), and it is
sent with one write on a pooled keep-alive upstream connection
(upstreams.py), which reads the answer with llhttp too. Each request is one
`Exchange` (exchange.py).

Everything else - a request to hold, a private instance, a WebSocket, a
chunked or large body, `Expect`, a target that is not a plain path, anything
llhttp refuses, HTTP/1.0, an admin path, an upstream that refuses the
connection - is handed to the aiohttp path (aiohttp_path.py) by switching the
connection's protocol, with the bytes not yet served: it gives the status
table's answers, holds, retries and wakes. A request is handed over before
anything of it was sent upstream, with one exception: an idempotent request
without a body whose replica went away under it (reset, then gone when tried
again on a new connection) is handed over marked `replayed`, so that the
aiohttp path sends it once more at most (it may wake the instance once).

llhttp is fed exactly one request at a time: up to the blank line that ends
its head, then its declared body. It never reads into the next pipelined
request, so the bytes handed over always start at a request's first byte.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from httptools import HttpParserError, HttpParserUpgrade

from controller.spec import Route, RouteTable

from . import policy
from .context import ProxyContext
from .deadline import Deadline
from .errors import raw_error, request_timeout
from .exchange import CUT, DONE, FAILED, HANDED_OFF, LEFT, Exchange
from .ignore import is_ignored
from .request_head import RequestHead
from .routing import normalize_host
from .server import take_over
from .targets import ALLOWED_METHODS

MAX_BODY = 64 * 1024  # larger bodies stream through the aiohttp path
_PAUSE_CLIENT_AT = 256 * 1024  # pipelined bytes buffered while a request is in flight
# The methods served here; any other (CONNECT above all: an upstream ignores its
# Content-Length, and would take the body for a next request) goes to the aiohttp
# path, which refuses or forwards it by the request-target rules.
FAST_METHODS = frozenset(method.encode() for method in ALLOWED_METHODS.split(", "))
# Request fields that send a request to the aiohttp path: framing it must read
# (chunked), upgrades, and `Expect` (100-continue).
_HANDED_OFF_FIELDS = frozenset((b"transfer-encoding", b"upgrade", b"expect"))
_ADMISSION_FIELDS = _HANDED_OFF_FIELDS | policy.SINGLE_FIELDS
_HEAD_END = b"\r\n\r\n"


class FastConnection(asyncio.Protocol):
    """A client connection: simple requests served here, the rest handed to aiohttp."""

    def __init__(self, context: ProxyContext,
                 slow_protocol: Callable[[], asyncio.Protocol]) -> None:
        self.context = context
        self._slow_protocol = slow_protocol
        self.transport: asyncio.Transport | None = None
        self.peer = ""
        self._trusted = False  # the peer is one of proxy.trusted_proxies (context.trusted)
        # The last Host and the route it named in that table.
        self._last_host = b""
        self._last_table: RouteTable | None = None
        self._last_route: Route | None = None
        self._buf = bytearray()  # from the first byte of the request being served
        self._exchange: Exchange | None = None  # the request in flight (one at a time)
        self.closing = False  # close once the request in flight is answered (shutdown)
        self._paused = False  # reading from the client paused: too much pipelined
        self.writing_paused = False  # the client is not reading: upstream reading pauses
        # The head llhttp is reading, and how far it has read into _buf.
        self._head = RequestHead()
        self._feed = self._head.parser.feed_data
        self._fed = 0
        self._head_end = 0  # _buf offset of the body, once the head is read
        self._admitted: Exchange | None = None  # head read, body awaited
        settings = context.settings
        self.read_timeout = settings.read_timeout
        self._max_head = settings.max_header_size
        # Larger bodies go to the aiohttp path: it streams them, and answers 413 past
        # proxy.max_body_size.
        self._max_body = min(MAX_BODY, settings.max_body_size)
        self._header_timeout = settings.header_timeout
        self._keepalive_timeout = settings.keepalive_timeout
        # The client timeouts (proxy.header_timeout, proxy.keepalive_timeout) and the
        # upstream's (read_timeout): one deadline each per connection, which requests
        # only move (deadline.py): the warm path creates and cancels no timer.
        self._client_deadline = Deadline(self._client_timeout)
        self.upstream_deadline = Deadline(self._upstream_timeout)
        self._head_timed = True  # the clock of the head now awaited runs (the first: from accept)
        self._served = False  # the connection has had an answer: a timeout closes it without 408

    # --- the client side (asyncio.Protocol) ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = peer[0] if peer else ""
        self._trusted = self.peer in self.context.trusted
        self.context.connections.add(self)
        self._client_deadline.set(time.monotonic() + self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.context.connections.discard(self)
        self.transport = None
        self._client_deadline.cancel()
        self.upstream_deadline.cancel()
        if self._exchange is not None:
            # The client left mid-exchange (nginx's 499): the upstream connection is
            # in an unknown state, so it is not reused.
            self._exchange.end(LEFT)

    def eof_received(self) -> bool | None:
        return None  # close our side too (a half-closed client gets no more answers)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._exchange is None:
            self._next_request()
        elif len(self._buf) > _PAUSE_CLIENT_AT and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def pause_writing(self) -> None:
        self.writing_paused = True
        exchange = self._exchange
        if exchange is not None and exchange.up is not None and exchange.up.transport:
            exchange.up.transport.pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        exchange = self._exchange
        if exchange is not None and exchange.up is not None and exchange.up.transport:
            # The upstream was silent because we held it: its read timeout restarts now.
            self.upstream_deadline.set(time.monotonic() + self.read_timeout)
            exchange.up.transport.resume_reading()

    @property
    def busy(self) -> bool:
        return self._exchange is not None

    def close_if_idle(self) -> None:
        if self._exchange is None and self.transport is not None:
            self.transport.close()
        else:
            self.closing = True

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- timeouts ---

    def _client_timeout(self) -> None:
        """The client deadline passed: close a connection whose head is late or that idles."""
        transport = self.transport
        if transport is None or self._exchange is not None:
            return  # closed or handed off; or a request in flight: it sets it again
        if self.writing_paused:
            # The client has not read the last answer yet: it is still being
            # delivered, not idle (aiohttp, likewise, is still finishing its response).
            self._client_deadline.set(time.monotonic() + self._keepalive_timeout)
            return
        if self._admitted is not None:
            # A whole head whose body is still coming: the head was in time. The
            # aiohttp path takes the request over, as one being handled, as it would
            # were the fast path off.
            self._hand_off()
            return
        if not self._served:
            transport.write(request_timeout(self._header_timeout))
        # Else a kept-alive connection: idle (keepalive_timeout) or with a next head
        # still incomplete (header_timeout); either way closed without an answer.
        transport.close()

    def _upstream_timeout(self) -> None:
        """No byte from the upstream for read_timeout."""
        exchange = self._exchange
        if exchange is None or exchange.up is None:
            return
        if self.writing_paused:
            # A client that stalls reading holds the upstream through flow control;
            # that is not an upstream that stopped answering (aiohttp's client, on the
            # other path, likewise stops sock_read while its reading is paused).
            self.upstream_deadline.set(time.monotonic() + self.read_timeout)
            return
        exchange.timed_out()

    # --- reading requests ---

    def _next_request(self) -> None:
        """Serve the request at the start of _buf, once llhttp has read enough of it."""
        if not self._buf or self.transport is None:
            return
        if self._admitted is None and not self._read_head():
            return
        exchange = self._admitted
        assert exchange is not None
        buf = self._buf
        total = exchange.consumed
        if len(buf) < total:
            return  # the body is still coming
        body = bytes(buf[self._head_end:total]) if total > self._head_end else b""
        if body:
            try:
                self._feed(body)
            except (HttpParserError, HttpParserUpgrade):
                self._hand_off()
                return
        if not self._head.message_done:
            self._hand_off()  # llhttp expects more than the length we read: not ours
            return
        self._admitted = None
        self._head.next()
        self._exchange = exchange
        exchange.start(body)

    def _read_head(self) -> bool:
        """Feed llhttp the head at the start of _buf; True once it is read and admitted
        (self._admitted set). Hands the connection off when it is not ours to serve."""
        buf = self._buf
        end = buf.find(_HEAD_END, max(self._fed - 3, 0))
        stop = end + 4 if end >= 0 else len(buf)
        if stop > self._max_head:
            self._hand_off()  # the aiohttp path answers 431
            return False
        if stop > self._fed:
            chunk = buf[self._fed:stop]
            if not chunk.isascii():
                # llhttp passes bytes beyond ASCII in a target or a value on; aiohttp
                # decodes them as UTF-8, and refuses some: it decides for both paths.
                self._hand_off()
                return False
            try:
                self._feed(chunk)
            except (HttpParserError, HttpParserUpgrade):
                self._hand_off()  # malformed, or an upgrade: the aiohttp path decides
                return False
            self._fed = stop
        if not self._head.read:
            if end >= 0 or self._head.url[:1] not in (b"", b"/"):
                # A blank line llhttp does not take for the end; or a target the
                # aiohttp path refuses (or forwards) by the request-target rules, and
                # may refuse before the head is whole.
                self._hand_off()
            elif not self._head_timed:
                # The first bytes of a next head, not whole yet: its clock starts now
                # (a head that comes whole at once, the usual case, never gets here).
                self._head_timed = True
                self._client_deadline.set(time.monotonic() + self._header_timeout)
            return False
        if end < 0:
            self._hand_off()  # llhttp ended the head before the blank line: not ours
            return False
        self._head_end = stop
        self._admitted = self._admit(stop)
        if self._admitted is None:
            self._hand_off()
            return False
        return True

    def _admit(self, head_len: int) -> Exchange | None:
        """The exchange for the head llhttp read; None if the aiohttp path must serve it."""
        head = self._head
        method = head.method
        url = head.url
        # HTTP/1.1 only, known methods, plain origin-form targets. The aiohttp path
        # applies the request-target rules (targets.py) to every other form: `//x`
        # and `/\x` paths, absolute-form, authority-form, `*`, fragments, bytes
        # beyond ASCII (which it refuses).
        if (method not in FAST_METHODS or head.version != "1.1"
                or url[:1] != b"/" or url[1:2] in (b"/", b"\\") or b"#" in url):
            return None
        host: bytes | None = None
        length = 0
        agent = b""
        fields = head.fields
        seen: set[bytes] = set()
        for name, value in fields:
            lname = name.lower()
            if lname not in _ADMISSION_FIELDS:
                continue
            if lname in seen:
                return None  # twice: the aiohttp path refuses it (policy.SINGLE_FIELDS)
            seen.add(lname)
            if lname == b"host":
                host = value
            elif lname == b"content-length":
                # llhttp took it (digits, one only, below 2**64); int() of it refuses
                # more than 4300 digits, leading zeros included.
                if len(value) > 18:
                    return None
                length = int(value)
            elif lname == b"user-agent":
                agent = value
            elif lname in _HANDED_OFF_FIELDS:
                return None
        if host is None or length > self._max_body or len(fields) > policy.MAX_FIELDS:
            return None
        context = self.context
        table = context.table
        if host == self._last_host and table is self._last_table:
            route = self._last_route  # a kept-alive client usually calls one host
        else:
            route = table.by_host.get(normalize_host(host.decode("latin-1")))
            self._last_host, self._last_table, self._last_route = host, table, route
        if route is None or not route.endpoints or route.access != "public":
            return None
        path = url.split(b"?", 1)[0]
        counts = True  # as the instance's activity (Exchange.start counts it)
        if route.ignore_paths or route.ignore_user_agents:
            if b"%" in path:
                return None  # the ignore rules compare decoded paths: the aiohttp path decodes
            counts = not is_ignored(route, path.decode("latin-1"), agent.decode("latin-1"))
        upstream_fields = policy.request_fields(fields, peer=self.peer, trusted=self._trusted,
                                                scheme="http")
        request = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, url, policy.render(upstream_fields))
        return Exchange(self, route, method, path, request, head_len + length,
                        head.keep_alive, counts)

    # --- the end of an exchange (Exchange.end) ---

    def exchange_ended(self, exchange: Exchange, how: int, replayed: bool, now: float) -> None:
        self._exchange = None
        self.upstream_deadline.clear()
        transport = self.transport
        if how == HANDED_OFF:
            self._hand_off(replayed)
            return
        if transport is None:
            return  # LEFT
        if how == FAILED:
            assert exchange.failure is not None
            transport.write(raw_error(*exchange.failure, exchange.route))
            transport.close()
            return
        if how == CUT:
            transport.abort()
            return
        assert how == DONE
        del self._buf[:exchange.consumed]
        self._fed = self._head_end = 0
        # Idle until the next head's first byte: the keep-alive deadline. Usually the
        # timer is still armed for an earlier deadline and re-arms itself then.
        self._served = True
        self._head_timed = False
        self._client_deadline.set(now + self._keepalive_timeout)
        if exchange.close_after or self.closing:
            transport.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._buf:
            self._next_request()  # pipelined

    def _hand_off(self, replayed: bool = False) -> None:
        """The aiohttp server takes this connection over, with every byte not yet served.

        `replayed`: the first request was sent upstream once already and its
        upstream died on it (it may wake the instance once more, not twice).
        """
        transport = self.transport
        if transport is None:
            return
        self.context.connections.discard(self)
        self.transport = None
        # From now on the aiohttp path times this connection (server.ProxyRequestHandler).
        self._client_deadline.cancel()
        self.upstream_deadline.cancel()
        unserved, self._buf = bytes(self._buf), bytearray()
        take_over(self._slow_protocol, transport, unserved, answered=self._served,
                  replayed=replayed, writing_paused=self.writing_paused,
                  reading_paused=self._paused)
