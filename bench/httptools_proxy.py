"""uvloop + httptools: the ceiling a Python proxy that parses HTTP with llhttp can reach.

Requests and responses are parsed with httptools (llhttp); the request head is
rewritten (hop-by-hop fields and those named in Connection removed,
X-Forwarded-For appended) and sent over pooled keep-alive upstream
connections; the response head is rewritten the same way. A reference point
for the warm-path bench, not a product: GET and Content-Length bodies are
what it is made for (chunked bodies are re-framed, request bodies are
buffered whole, HEAD spends its upstream connection, Upgrade/CONNECT get 501,
a stale pooled connection is not retried).

Usage: python -m bench.httptools_proxy --port P --upstream-port U [--host 127.0.0.1]
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

import httptools

from bench import reference

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})


def _frame(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(body), body)


class _Head:
    """httptools callbacks that collect a head's fields as lines, hop-by-hop ones left out."""

    special = HOP_BY_HOP | {b"content-length"}

    def on_message_begin(self) -> None:
        self.lines: list[bytes] = []
        self.named: frozenset[bytes] = frozenset()  # what Connection names
        self.forwarded: tuple[bytes, ...] = ()  # X-Forwarded-For values (requests)
        self.url = self.reason = b""
        self.length = self.chunked = False

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower not in self.special:
            self.lines.append(name + b": " + value + b"\r\n")
        elif lower == b"content-length":
            self.length = True
            self.lines.append(name + b": " + value + b"\r\n")
        elif lower == b"transfer-encoding":
            self.chunked = True  # llhttp accepted it, so chunked is the last coding
        elif lower == b"connection":
            self.named |= {v.strip().lower() for v in value.split(b",")}
        elif lower == b"x-forwarded-for":
            self.forwarded += (value,)

    def head_lines(self) -> list[bytes]:
        if self.named and not self.named <= HOP_BY_HOP:
            self.lines = [x for x in self.lines
                          if x.split(b":", 1)[0].lower() not in self.named]
        if self.chunked:
            self.lines.append(b"Transfer-Encoding: chunked\r\n")
        return self.lines


class Request:
    __slots__ = ("head_only", "keep_alive", "parts")

    def __init__(self, head: bytes, head_only: bool) -> None:
        self.parts, self.keep_alive, self.head_only = [head], True, head_only


class Client(_Head, asyncio.Protocol):
    special = _Head.special | {b"x-forwarded-for"}

    def __init__(self, pool: Pool) -> None:
        self.pool, self.queue = pool, deque[Request]()
        self.upstream: Upstream | None = None  # answering queue[0]
        self.parser = httptools.HttpRequestParser(self)
        self.busy = self.write_paused = self.queue_full = self.ended = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0].encode() if peer else b"unknown"

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(b"501 Not Implemented")
        except httptools.HttpParserError:
            self.fail(b"400 Bad Request")

    def eof_received(self) -> bool:
        self.ended = True  # the client is done sending; answer what it sent, then close
        return self.busy

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        method, lines = self.parser.get_method(), self.head_lines()
        lines.append(b"X-Forwarded-For: " + b", ".join((*self.forwarded, self.client_ip)) + b"\r\n")
        head = b"%s %s HTTP/1.1\r\n%s\r\n" % (method, self.url, b"".join(lines))
        self.request = Request(head, method == b"HEAD")

    def on_body(self, body: bytes) -> None:
        self.request.parts.append(_frame(body) if self.chunked else body)

    def on_message_complete(self) -> None:
        if self.chunked:
            self.request.parts.append(b"0\r\n\r\n")
        if self.parser.should_upgrade():
            return  # feed_data raises HttpParserUpgrade next: 501
        self.request.keep_alive = self.parser.should_keep_alive()
        self.queue.append(self.request)
        if len(self.queue) > 16:  # pipelined faster than answered
            self.transport.pause_reading()
            self.queue_full = True
        self.next()

    def next(self) -> None:
        if not self.busy and self.queue and not self.transport.is_closing():
            self.busy = True
            self.pool.send(self, self.queue[0])

    def done(self, close: bool) -> None:
        self.busy, self.upstream = False, None
        if not self.queue.popleft().keep_alive or close or (self.ended and not self.queue):
            self.transport.close()
            return
        if self.queue_full:
            self.queue_full = False
            self.transport.resume_reading()
        self.next()

    def fail(self, status: bytes) -> None:
        if not self.busy:
            self.transport.write(b"HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                 % status)
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:  # mid-response: that upstream connection is spoilt
            self.upstream.client = None
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        self.write_paused = True
        if self.upstream is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.upstream is not None:
            self.upstream.transport.resume_reading()


class Upstream(_Head, asyncio.Protocol):
    client: Client | None = None

    def __init__(self, pool: Pool) -> None:
        self.pool, self.parser = pool, httptools.HttpResponseParser(self)
        self.out: list[bytes] = []  # for the client: one write per read, not one per part

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def send(self, client: Client, request: Request) -> None:
        self.client, self.request, self.started = client, request, False
        client.upstream = self
        if client.write_paused:
            self.transport.pause_reading()
        self.transport.write(b"".join(request.parts))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()
        if self.out:
            self.flush()

    def flush(self, client: Client | None = None) -> None:
        if self.out and (client := client or self.client) is not None:
            client.transport.write(b"".join(self.out))
        self.out.clear()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_headers_complete(self) -> None:
        status, client = self.parser.get_status_code(), self.client
        if client is None or 100 <= status < 200:  # an interim response is not passed on
            return
        lines = self.head_lines()
        until_close = not (self.length or self.chunked or status in (204, 304)
                           or self.request.head_only)
        if until_close or not self.request.keep_alive:
            lines.append(b"Connection: close\r\n")
        self.started, self.close_client = True, until_close
        self.out.append(b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, self.reason, b"".join(lines)))
        if self.request.head_only:  # llhttp would wait for the body: this connection is spent
            self.flush()
            self.client = None
            self.transport.close()
            client.done(False)

    def on_body(self, body: bytes) -> None:
        if self.client is not None and self.started:
            self.out.append(_frame(body) if self.chunked else body)

    def on_message_complete(self) -> None:
        client = self.client
        if client is None or not self.started:
            return
        if self.chunked:
            self.out.append(b"0\r\n\r\n")
        self.flush()
        self.client = None
        if self.parser.should_keep_alive():
            if client.write_paused:
                self.transport.resume_reading()
            self.pool.idle.append(self)
        else:
            self.transport.close()
        client.done(self.close_client)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.pool.idle:
            self.pool.idle.remove(self)
        client, self.client = self.client, None
        self.flush(client)
        if client is not None and self.started:  # during the response: ends it (or its body)
            client.upstream = None
            client.transport.close()
        elif client is not None:  # before it
            client.busy, client.upstream = False, None
            client.fail(b"502 Bad Gateway")


class Pool:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port, self.idle = host, port, list[Upstream]()
        self.connecting = set[asyncio.Task[None]]()

    def send(self, client: Client, request: Request) -> None:
        while self.idle:
            upstream = self.idle.pop()
            if not upstream.transport.is_closing():
                upstream.send(client, request)
                return
        task = asyncio.get_running_loop().create_task(self._connect(client, request))
        self.connecting.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(self.connecting.discard)

    async def _connect(self, client: Client, request: Request) -> None:
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(
                lambda: Upstream(self), self.host, self.port)
        except OSError:
            client.busy = False
            client.fail(b"502 Bad Gateway")
            return
        if client.transport.is_closing():
            self.idle.append(upstream)
        else:
            upstream.send(client, request)


def main() -> None:
    def protocol_for(upstream: reference.Upstream) -> Callable[[], asyncio.Protocol]:
        pool = Pool(*upstream)
        return lambda: Client(pool)

    reference.main(__doc__.split("\n")[0], protocol_for)


if __name__ == "__main__":
    main()
