"""The warm path at the protocol level: simple requests to ready public instances.

Most requests a proxy sees are plain: HTTP/1.1, one Host naming a public
instance that has ready endpoints, no upgrade, a small body or none. For
those, going through aiohttp's request objects and its client costs more
CPU than the forwarding itself. This module serves them with one asyncio
protocol per client connection and a pool of raw keep-alive connections per
upstream endpoint: the request head is checked and rewritten as bytes, sent
with one write on a pooled connection (no task, no await), and the answer is
streamed back as it arrives, its framing (Content-Length, chunked, or until
close) followed only to know where it ends.

Everything else - a request to hold, a private instance, a WebSocket, a
chunked or large body, `Expect`, a wakegate key, a target that is not a plain
path, anything malformed, an admin path, an upstream that refuses the
connection - is handed to the aiohttp server (`proxy.app`) by switching the
connection's protocol, with the bytes not yet consumed. It gives the status
table's answers, holds, retries and wakes. A request is handed over before
anything of it was sent upstream, with one exception: an idempotent request
without a body whose replica went away under it (reset, then gone when tried
again on a new connection) is handed over marked `replayed`, so that the
aiohttp path sends it once more at most (it may wake the instance once).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .access import is_wakegate_bearer
from .deadline import Deadline
from .errors import raw_error, request_timeout
from .headers import CLIENT_FORWARDED, HOP_BY_HOP
from .refusals import accepts
from .routing import normalize_host

if TYPE_CHECKING:
    from controller.spec import Route

    from .app import Proxy

_MAX_BODY = 64 * 1024  # larger bodies stream through the aiohttp path
_MAX_RESPONSE_HEAD = 64 * 1024
_MAX_IDLE_PER_ENDPOINT = 256
_PAUSE_CLIENT_AT = 256 * 1024  # pipelined bytes buffered while a request is in flight
_IDEMPOTENT = frozenset((b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"))
# The methods served here; any other (CONNECT above all: an upstream ignores its
# Content-Length, and would take the body for a next request) goes to the aiohttp
# path, which refuses or forwards it by the request-target rules.
_FAST_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE",
                           b"OPTIONS"))
_HOP = frozenset(name.encode() for name in HOP_BY_HOP)
# Kept on the way back: the framing we pass through unchanged.
_HOP_DOWN = _HOP - {b"transfer-encoding"}
_CLIENT_FORWARDED = frozenset(name.lower().encode() for name in CLIENT_FORWARDED)
# Control characters (other than tab) anywhere in a head: the aiohttp path answers 400.
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# Never dropped because Connection names them: the framing (and the Host) would
# then differ between what we parse and what the other side reads (smuggling).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"host"))

# Request fields that send a request to the aiohttp path: framing it must parse,
# upgrades, `Expect` (100-continue), and wakegate's own key (X-API-Key).
_HANDED_OFF_FIELDS = frozenset((b"transfer-encoding", b"upgrade", b"expect", b"x-api-key"))

# Response body framing.
_NONE, _LENGTH, _CHUNKED, _UNTIL_CLOSE = range(4)


class _Chunks:
    """Finds where a chunked body ends, without decoding it (it is passed on as is)."""

    __slots__ = ("left", "line", "state")

    def __init__(self) -> None:
        self.state = 0  # 0 size line, 1 data, 2 the empty line after data, 3 trailer lines
        self.left = 0
        self.line = b""

    def feed(self, data: bytes) -> int:
        """Index just past the body's end in `data`, -1 if not there yet; ValueError if bad."""
        i, n = 0, len(data)
        while i < n:
            if self.state == 1:
                take = min(self.left, n - i)
                i += take
                self.left -= take
                if self.left == 0:
                    self.state = 2
                continue
            end = data.find(b"\n", i)
            if end < 0:
                self.line += data[i:]
                if len(self.line) > 4096:
                    raise ValueError("chunk line too long")
                return -1
            line, self.line = (self.line + data[i:end]).rstrip(b"\r"), b""
            i = end + 1
            if self.state == 3:
                if not line:
                    return i  # the empty line after the trailers: the end
                continue
            if self.state == 2:
                if line:
                    raise ValueError("chunk data longer than its size")
                self.state = 0
                continue
            digits = line.split(b";", 1)[0].rstrip(b" \t")
            if not _HEX.fullmatch(digits):
                raise ValueError("a chunk size that is not hexadecimal")
            size = int(digits, 16)
            if size == 0:
                self.state = 3
            else:
                self.state, self.left = 1, size
        return -1


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to an endpoint; bytes go to the exchange using it."""

    __slots__ = ("closed", "endpoint", "owner", "pool", "transport")

    def __init__(self, pool: UpstreamPool, endpoint: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.owner: FastConnection | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.owner is not None:
            self.owner.upstream_data(data)
        else:
            self.close()  # bytes nobody asked for: never reuse this connection

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.discard(self)
        if self.owner is not None:
            self.owner.upstream_lost()

    def close(self) -> None:
        self.closed = True
        self.pool.discard(self)
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections, per endpoint; a busy one belongs to its exchange."""

    def __init__(self, connect_timeout: float) -> None:
        self._idle: dict[str, list[_Upstream]] = {}
        self._connect_timeout = connect_timeout

    def take(self, endpoint: str) -> _Upstream | None:
        idle = self._idle.get(endpoint)
        while idle:
            up = idle.pop()
            if not up.closed and up.transport is not None and not up.transport.is_closing():
                return up
        return None

    async def connect(self, endpoint: str) -> _Upstream:
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        _, up = await asyncio.wait_for(
            loop.create_connection(lambda: _Upstream(self, endpoint), host.strip("[]"),
                                   int(port)),
            self._connect_timeout)
        return up

    def give_back(self, up: _Upstream) -> None:
        idle = self._idle.setdefault(up.endpoint, [])
        if up.closed or len(idle) >= _MAX_IDLE_PER_ENDPOINT:
            up.close()
        else:
            idle.append(up)

    def discard(self, up: _Upstream) -> None:
        idle = self._idle.get(up.endpoint)
        if idle and up in idle:
            idle.remove(up)

    def close(self) -> None:
        for idle in self._idle.values():
            for up in list(idle):
                up.close()
        self._idle.clear()


class FastConnection(asyncio.Protocol):
    """A client connection: simple requests served here, the rest handed to aiohttp."""

    def __init__(self, proxy: Proxy, slow_protocol: Callable[[], asyncio.Protocol]) -> None:
        self._proxy = proxy
        self._slow_protocol = slow_protocol
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._peer = ""
        # The exchange in flight (one at a time; pipelined requests wait in _buf).
        self._up: _Upstream | None = None
        self._req: bytes = b""
        self._req_len = 0
        self._retry_ok = False
        self._on_fresh = False
        self._close_after = False
        self._head_only = False
        self._method = self._path = b""
        self._route: Route | None = None
        self._started = 0.0
        self._resp_head = bytearray()
        self._pending_head = b""
        self._framing = _NONE
        self._left = 0
        self._chunks: _Chunks | None = None
        self._status = 0
        self._reuse = True
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None
        self._last_byte = 0.0
        self._counted: Any = None  # the InstanceActivity this request counts in
        self._paused = False
        self._writing_paused = False  # the client is not reading: upstream reading is paused
        self._connecting: asyncio.Task[None] | None = None  # a new upstream connection
        # The client timeouts (proxy.header_timeout, proxy.keepalive_timeout): one
        # deadline per connection that requests only move (deadline.py), so the
        # warm path creates and cancels no timer per request.
        settings = proxy.settings
        self._header_timeout = settings.header_timeout
        self._keepalive_timeout = settings.keepalive_timeout
        self._client_deadline = Deadline(self._client_timeout)
        self._head_timed = True  # the clock of the head now awaited runs (the first: from accept)
        self._served = False  # the connection has had an answer: a timeout closes it without 408

    # --- the client side ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._peer = peer[0] if peer else ""
        self._proxy.fast_connections.add(self)
        self._client_deadline.set(time.monotonic() + self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._proxy.fast_connections.discard(self)
        if self._route is not None:
            # The client left mid-exchange (nginx's 499): the upstream
            # connection is in an unknown state, so it is not reused.
            if self._up is not None:
                self._up.owner = None
                self._up.close()
                self._up = None
            self._finish(499)
        self._transport = None
        self._client_deadline.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._route is None:
            self._next_request()
        elif len(self._buf) > _PAUSE_CLIENT_AT and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True

    def pause_writing(self) -> None:
        self._writing_paused = True
        if self._up is not None and self._up.transport is not None:
            self._up.transport.pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        # The upstream was silent because we held it: its read timeout restarts now.
        self._last_byte = time.monotonic()
        if self._up is not None and self._up.transport is not None:
            self._up.transport.resume_reading()

    @property
    def busy(self) -> bool:
        return self._route is not None

    def close_if_idle(self) -> None:
        if self._route is None and self._transport is not None:
            self._transport.close()
        else:
            self._close_after = True

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _client_timeout(self) -> None:
        """The client deadline passed: close a connection whose head is late or that idles."""
        transport = self._transport
        if transport is None or self._route is not None:
            return  # closed or handed off; or a request in flight: _finish sets it again
        if self._writing_paused:
            # The client has not read the last answer yet: it is still being
            # delivered, not idle (aiohttp, likewise, is still finishing its response).
            self._client_deadline.set(time.monotonic() + self._keepalive_timeout)
            return
        if self._buf.find(b"\r\n\r\n") >= 0:
            # A whole head whose body is still coming (_start waits for it): the
            # head was in time. The aiohttp path takes the request over, as one
            # being handled, as it would were the fast path off.
            self._hand_off()
            return
        if not self._served:
            transport.write(request_timeout(self._header_timeout))
        # Else a kept-alive connection: idle (keepalive_timeout) or with a next head
        # still incomplete (header_timeout); either way closed without an answer.
        transport.close()

    def _hand_off(self, replayed: bool = False) -> None:
        """The aiohttp server takes this connection over, with every byte not yet served.

        `replayed`: the first request was sent upstream once already and its
        upstream died on it (it may wake the instance once more, not twice).
        """
        transport = self._transport
        if transport is None:
            return
        self._proxy.fast_connections.discard(self)
        self._transport = None
        # From now on the aiohttp path times this connection (_ProxyRequestHandler).
        self._client_deadline.cancel()
        slow = self._slow_protocol()
        if self._served:
            slow.answered = True  # type: ignore[attr-defined]  # a late head gets no 408
        if replayed:
            slow.replayed = True  # type: ignore[attr-defined]
        transport.set_protocol(slow)
        slow.connection_made(transport)
        if self._writing_paused:
            # The client is behind on reading: aiohttp must know, or it buffers
            # its answers without limit.
            slow.pause_writing()
        if self._paused:
            transport.resume_reading()
        if self._buf:
            data, self._buf = bytes(self._buf), bytearray()
            slow.data_received(data)

    def _next_request(self) -> None:
        buf = self._buf
        if not buf or self._transport is None:
            return
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            # Too long (the aiohttp path answers 431), or bare LF line ends (it decides).
            if len(buf) > self._proxy.settings.max_header_size or b"\n\n" in buf:
                self._hand_off()
            elif not self._head_timed:
                # The first bytes of a next head, not whole yet: its clock starts now
                # (a head that comes whole at once, the usual case, never gets here).
                self._head_timed = True
                self._client_deadline.set(time.monotonic() + self._header_timeout)
            return
        if end > self._proxy.settings.max_header_size or not self._start(bytes(buf[:end]),
                                                                         end + 4):
            self._hand_off()

    def _start(self, head: bytes, head_len: int) -> bool:
        """Forward the request whose head is `head`; False: the aiohttp path must serve it."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[2] != b"HTTP/1.1":
            return False
        method, target = parts[0], parts[1]
        # Only plain origin-form targets here; the aiohttp path applies the
        # request-target rules (targets.py) to every other form: `//x` and
        # `/\x` paths, absolute-form, authority-form, `*`, fragments, bytes
        # beyond ASCII (which it refuses).
        if (method not in _FAST_METHODS or not target.startswith(b"/")
                or target[1:2] in (b"/", b"\\") or b"#" in target or not target.isascii()
                or b"\t" in lines[0]):
            return False
        if _CONTROL.search(head.replace(b"\r\n", b"\t")):
            return False
        host: bytes | None = None
        length = -1  # no Content-Length
        close = False
        agent = b""
        listed: set[bytes] = set()
        fields: list[tuple[bytes, bytes, bytes]] = []  # (lower name, value, raw line)
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep or not _TOKEN.fullmatch(name):
                return False
            lname = name.lower()
            value = value.strip(b" \t")
            if lname == b"host":
                if host is not None:
                    return False
                host = value
            elif lname == b"content-length":
                # Any second one goes to the aiohttp path (400 if they differ). This
                # was `if length`, which let "0" then "40" through: we sent 40 bytes
                # of body, the upstream read 0 and took the rest as a second request.
                if length >= 0 or not value.isdigit() or len(value) > 18:
                    return False
                length = int(value)
            elif lname in _HANDED_OFF_FIELDS:
                return False
            elif lname == b"authorization" and is_wakegate_bearer(value):
                # A wakegate key sent to a public host: stripped by the aiohttp path, the
                # one place that decides which credentials never reach a service.
                return False
            elif lname == b"connection":
                for token in value.lower().split(b","):
                    token = token.strip()
                    if token == b"close":
                        close = True
                    elif token:
                        listed.add(token)
            elif lname == b"user-agent":
                agent = value
            fields.append((lname, value, line))
        length = max(length, 0)
        if host is None or length > _MAX_BODY or not listed.isdisjoint(_FRAMING):
            return False
        proxy = self._proxy
        route = proxy.table.by_host.get(normalize_host(host.decode("latin-1")))
        if route is None or not route.endpoints or route.access != "public":
            return False
        path = target.split(b"?", 1)[0]
        if b"%" in path:
            return False  # the ignore rules compare decoded paths: the aiohttp path decodes
        total = head_len + length
        if len(self._buf) < total:
            return True  # the body is still coming: called again with more bytes
        upstream_head = self._upstream_head(lines[0], fields, listed, host)
        self._req = upstream_head + bytes(self._buf[head_len:total]) if length else \
            upstream_head
        self._req_len = total
        self._retry_ok = method in _IDEMPOTENT and not length
        self._on_fresh = False  # the request is on the new connection of that one retry
        self._head_only = method == b"HEAD"
        self._method, self._path = method, path
        self._close_after = close
        self._route = route
        self._started = time.monotonic()
        self._status = 0
        self._answered = False
        ignored = proxy.is_ignored(route, path.decode("latin-1"), agent.decode("latin-1"))
        self._counted = None if ignored else proxy.activity.of(route.key)
        if self._counted is not None:
            self._counted.in_flight += 1
        endpoint = proxy.forwarder.pick(route, 0)
        up = proxy.upstreams.take(endpoint)
        if up is not None:
            self._send(up)
        else:
            self._connecting = asyncio.ensure_future(self._connect_and_send(endpoint, True))
        return True

    def _upstream_head(self, request_line: bytes, fields: list[tuple[bytes, bytes, bytes]],
                       listed: set[bytes], host: bytes) -> bytes:
        """The head sent upstream: hop-by-hop fields removed, X-Forwarded-* set as
        headers.upstream_request_headers does on the aiohttp path."""
        trusted = self._peer in self._proxy.trusted
        out = [request_line]
        prior: list[bytes] = []
        have_proto = have_host = False
        for lname, value, line in fields:
            if lname in _HOP or lname in listed:
                continue
            if lname in _CLIENT_FORWARDED or (b"_" in lname and
                                              lname.replace(b"_", b"-") in _CLIENT_FORWARDED):
                if not trusted:
                    continue  # as headers.is_client_forwarded
                if lname == b"x-forwarded-for":
                    prior.append(value)
                    continue
                have_proto = have_proto or lname == b"x-forwarded-proto"
                have_host = have_host or lname == b"x-forwarded-host"
            out.append(line)
        peer = self._peer.encode()
        if prior:
            out.append(b"X-Forwarded-For: " + b", ".join(prior) + b", " + peer)
        else:
            out.append(b"X-Forwarded-For: " + peer)
        if not have_proto:
            out.append(b"X-Forwarded-Proto: http")
        if not have_host:
            out.append(b"X-Forwarded-Host: " + host)
        out.append(b"\r\n")
        return b"\r\n".join(out)

    # --- the upstream side ---

    async def _connect_and_send(self, endpoint: str, first: bool) -> None:
        try:
            up: _Upstream | None = await self._proxy.upstreams.connect(endpoint)
        except (OSError, TimeoutError):
            up = None
        if self._route is None or self._transport is None:
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
        # Refused: that endpoint is out of the table (refusals.py). The aiohttp
        # path tries the next one or holds the request while the instance wakes.
        # A request sent before (its upstream then died) is marked so: it may
        # wake the instance once more, never loop into another crash.
        assert self._route is not None
        self._proxy.endpoint_refused(self._route, endpoint)
        self._undo_count()
        self._hand_off(replayed=not first)

    def _send(self, up: _Upstream) -> None:
        assert up.transport is not None
        self._up = up
        up.owner = self
        self._resp_head = bytearray()
        self._framing = _NONE
        self._reuse = True
        self._last_byte = time.monotonic()
        if self._timer is None:
            # Armed before the write: whatever happens to it, this exchange ends.
            self._timer = asyncio.get_running_loop().call_later(
                self._proxy.settings.read_timeout, self._check_timeout)
        try:
            if self._writing_paused:
                # The client still has not read the last answers: this one waits
                # too, or a client that pipelines without reading would be
                # buffered here without limit.
                up.transport.pause_reading()
            up.transport.write(self._req)
        except RuntimeError:
            # The connection closed under us (uvloop raises on a closed handle).
            up.close()
            self.upstream_lost()

    def _check_timeout(self) -> None:
        self._timer = None
        if self._route is None:
            return
        idle = time.monotonic() - self._last_byte
        timeout = self._proxy.settings.read_timeout
        if self._writing_paused:
            # A client that stalls reading holds the upstream through flow control;
            # that is not an upstream that stopped answering. Without this, a download
            # to a client that paused for read_timeout was cut (aiohttp's client, on
            # the other path, likewise stops sock_read while its reading is paused).
            self._timer = asyncio.get_running_loop().call_later(timeout, self._check_timeout)
            return
        if idle < timeout:
            self._timer = asyncio.get_running_loop().call_later(timeout - idle,
                                                                self._check_timeout)
            return
        if self._up is not None:
            self._up.owner = None
            self._up.close()
            self._up = None
        if self._answered:
            self._cut()
        else:
            self._error(504, "upstream_timeout",
                        f"The service did not answer in time (read "
                        f"{self._proxy.settings.read_timeout:g}s).")

    def upstream_data(self, data: bytes) -> None:
        self._last_byte = time.monotonic()
        if self._answered:
            self._body(data)
            return
        self._resp_head += data
        while True:
            end = self._resp_head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._resp_head) > _MAX_RESPONSE_HEAD:
                    self._bad_upstream()
                return
            head = bytes(self._resp_head[:end])
            rest = bytes(self._resp_head[end + 4:])
            try:
                out = self._response_head(head)
            except ValueError:
                self._bad_upstream()
                return
            if out is None:  # 1xx: informational, the real answer follows
                self._resp_head = bytearray(rest)
                continue
            self._answered = True
            self._resp_head = bytearray()
            # Head and body in one write when the whole answer came at once
            # (the common case): one send() instead of two.
            self._pending_head = out
            self._body(rest)
            if self._pending_head and self._transport is not None:
                self._transport.write(self._pending_head)
            self._pending_head = b""
            return

    def _response_head(self, head: bytes) -> bytes | None:
        lines = head.split(b"\r\n")
        version, _, rest = lines[0].partition(b" ")
        code = rest[:3]
        if not version.startswith(b"HTTP/1.") or not code.isdigit():
            raise ValueError("not an HTTP/1.x status line")
        status = int(code)
        if 100 <= status < 200:
            if status == 101:
                raise ValueError("upgrade without a request for it")
            return None
        keep = version == b"HTTP/1.1"
        length = -1
        chunked = False
        listed: set[bytes] = set()
        kept: list[tuple[bytes, bytes]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(b":")
            if not sep:
                raise ValueError("a header line without a colon")
            lname = name.strip().lower()
            value = value.strip()
            if lname == b"connection":
                for token in value.lower().split(b","):
                    token = token.strip()
                    if token == b"close":
                        keep = False
                    elif token == b"keep-alive" and version == b"HTTP/1.0":
                        keep = True
                    elif token:
                        listed.add(token)
                continue
            if lname == b"transfer-encoding":
                chunked = value.lower().rsplit(b",", 1)[-1].strip() == b"chunked"
                if not chunked:
                    raise ValueError("a transfer coding other than chunked")
            elif lname == b"content-length":
                if not value.isdigit() or (length >= 0 and int(value) != length):
                    raise ValueError("a bad Content-Length")
                length = int(value)
            kept.append((lname, line))
        if self._head_only or status in (204, 304):
            framing = _NONE
        elif chunked:
            framing = _CHUNKED
            self._chunks = _Chunks()
        elif length >= 0:
            framing, self._left = _LENGTH, length
        else:
            framing, keep = _UNTIL_CLOSE, False
        self._framing = framing
        self._reuse = keep
        self._status = status
        out = [b"HTTP/1.1 " + rest]
        for lname, line in kept:
            if lname in _HOP_DOWN or (lname in listed and lname not in _FRAMING):
                continue
            if chunked and lname == b"content-length":
                continue
            out.append(line)
        if framing == _UNTIL_CLOSE or self._close_after:
            self._close_after = True
            out.append(b"Connection: close")
        out.append(b"\r\n")
        return b"\r\n".join(out)

    def _body(self, data: bytes) -> None:
        framing = self._framing
        if framing == _NONE:
            if data:
                self._reuse = False  # more than the answer: this connection is confused
            self._done()
            return
        if framing == _LENGTH:
            if len(data) >= self._left:
                if len(data) > self._left:
                    self._reuse = False
                    data = data[:self._left]
                self._left = 0
                self._emit(data)
                self._done()
                return
            self._left -= len(data)
            self._emit(data)
            return
        if framing == _CHUNKED:
            assert self._chunks is not None
            try:
                end = self._chunks.feed(data) if data else -1
            except ValueError:
                self._up_broke()
                return
            if end >= 0:
                if end < len(data):
                    self._reuse = False
                    data = data[:end]
                self._emit(data)
                self._done()
                return
        self._emit(data)

    def _emit(self, data: bytes) -> None:
        """Body bytes to the client, behind the answer's head if it is not out yet."""
        if self._pending_head:
            data, self._pending_head = self._pending_head + data, b""
        if data and self._transport is not None:
            self._transport.write(data)

    def upstream_lost(self) -> None:
        """The upstream closed or reset its connection while this exchange used it."""
        up, self._up = self._up, None
        if up is not None:
            up.owner = None
        if self._route is None:
            return
        if self._answered:
            if self._framing == _UNTIL_CLOSE:
                self._done()  # the close is the end of this answer
            else:
                self._cut()
            return
        if self._retry_ok:
            # A pooled keep-alive connection the upstream just closed looks
            # the same as a reset: an idempotent, body-less request is sent
            # again once, on a new connection.
            self._retry_ok = False
            self._on_fresh = True
            assert self._route is not None
            endpoint = self._proxy.forwarder.pick(self._route, 1)
            self._connecting = asyncio.ensure_future(self._connect_and_send(endpoint, False))
            return
        if self._on_fresh and up is not None:
            # Even a new connection broke before an answer: is the replica gone?
            self._connecting = asyncio.ensure_future(self._after_fresh_reset(up.endpoint))
            return
        self._error(502, "upstream_reset", "The service closed the connection without "
                                           "answering.")

    async def _after_fresh_reset(self, endpoint: str) -> None:
        """The retry on a new connection broke too: 502 if the replica still listens (it
        is this request it breaks on), else it is gone (its controller may have died,
        taking it along): out of the table, and the aiohttp path tries the next one or
        holds the request while the instance wakes."""
        alive = await accepts(endpoint, self._proxy.settings.connect_timeout)
        if self._route is None or self._transport is None:
            return  # the client left meanwhile
        if alive:
            self._error(502, "upstream_reset", "The service closed the connection without "
                                               "answering.")
            return
        self._proxy.endpoint_refused(self._route, endpoint)
        self._undo_count()
        self._hand_off(replayed=True)

    def _bad_upstream(self) -> None:
        if self._up is not None:
            self._up.owner = None
            self._up.close()
            self._up = None
        self._error(502, "upstream_invalid", "The service answered with a malformed response.")

    def _up_broke(self) -> None:
        if self._up is not None:
            self._up.owner = None
            self._up.close()
            self._up = None
        if self._pending_head:
            # Nothing of the answer went out yet: the client can still get a 502.
            self._pending_head = b""
            self._error(502, "upstream_invalid",
                        "The service answered with a malformed response.")
        else:
            self._cut()

    # --- ending an exchange ---

    def _done(self) -> None:
        self._emit(b"")
        up, self._up = self._up, None
        if up is not None:
            up.owner = None
            if self._reuse and not up.closed:
                if self._writing_paused and up.transport is not None:
                    # Paused for this client only (pause_writing): a connection given
                    # back paused would leave the next exchange on it unread, to end
                    # in a 504 after read_timeout, on someone else's request.
                    up.transport.resume_reading()
                self._proxy.upstreams.give_back(up)
            else:
                up.close()
        self._finish(self._status)
        transport = self._transport
        if transport is None:
            return
        if self._close_after:
            transport.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        self._next_request()

    def _error(self, status: int, code: str, message: str) -> None:
        """An answer of the status table, before anything of the upstream's went out."""
        route = self._route
        transport = self._transport
        self._status = status
        self._close_after = True
        self._finish(status)
        if transport is not None:
            transport.write(raw_error(status, code, message, route))
            transport.close()

    def _cut(self) -> None:
        """The answer started and cannot be completed: the client must see it truncated."""
        self._finish(self._status)
        if self._transport is not None:
            self._transport.abort()

    def _undo_count(self, ended_at: float | None = None) -> None:
        """The request stops counting as in flight (as activity up to `ended_at`)."""
        if self._counted is not None:
            self._counted.in_flight -= 1
            if ended_at is not None:
                self._counted.last_end = ended_at
            self._counted = None
        self._route = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _finish(self, status: int) -> None:
        route = self._route
        if route is None:
            return
        now = time.monotonic()
        self._proxy.request_done(route, status, now - self._started, self._method, self._path,
                                 self._peer, False)
        self._undo_count(now)
        del self._buf[:self._req_len]
        self._req_len = 0
        # Idle until the next head's first byte: the keep-alive deadline. Usually
        # the timer is still armed for an earlier deadline and re-arms itself then.
        self._served = True
        self._head_timed = False
        self._client_deadline.set(now + self._keepalive_timeout)
