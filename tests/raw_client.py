"""A raw HTTP/1.1 client for the tests that care about the bytes on the wire.

What a test sends goes out byte for byte: the smuggling and framing tests write malformed
requests on purpose, so no client library may tidy them. What comes back is parsed by
h11, a parser that is neither of wakegate's (llhttp on the fast path, aiohttp's on the
other): the tests that hold the two paths to one answer are not graded by either of them.
An answer h11 refuses, or bytes a test wants as they are, are read raw: `Conn.reader`
gives every byte the parser has not consumed, and `exchange_bytes` a whole connection's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import h11

HOST = "raw.staging.localhost"  # request()'s default Host: tests/upstreams/raw_http.py
IO_DEADLINE = 5.0  # any single read on a test socket
MAX_HEAD = 1024 * 1024  # an answer's head, at the most: far above any a proxy sends
READ_SIZE = 65536

T = TypeVar("T")


class Listening(Protocol):
    """What a connection is opened to: a wakegate's proxy port."""

    @property
    def proxy_port(self) -> int: ...


def request(method: str, target: str, host: str = HOST, headers: tuple[tuple[str, str], ...] = (),
            body: bytes = b"") -> bytes:
    """A well-formed request's bytes (Content-Length added when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass
class Resp:
    """One answer as h11 read it: field names in the spelling they came in."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)
    version: str = "1.1"

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} more than once: {self.headers}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def served_by_aiohttp(self) -> bool:
        return self.header("Server") is not None


def _fields(headers: Any) -> list[tuple[str, str]]:
    return [(k.decode("latin-1"), v.decode("latin-1")) for k, v in headers.raw_items()]


class AnswerReader:
    """One answer (and the 1xx ones before it) being read by h11, from the bytes it is fed.

    h11 reads an answer only after it has seen a request go out; the bytes really sent
    are the test's own, so it is shown a stand-in GET. An answer to HEAD has no body
    whatever its head says: read it with head() alone."""

    def __init__(self) -> None:
        self.parser = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.parser.send(h11.Request(method="GET", target="/", headers=[("Host", "test")]))
        self.parser.send(h11.EndOfMessage())
        self.resp: Resp | None = None
        self.informational: list[int] = []
        self.body = bytearray()  # so far

    def feed(self, data: bytes) -> None:
        """More bytes of the connection; b"": it was closed."""
        self.parser.receive_data(data)

    def head(self) -> bool:
        """Whether the head is in (False: feed more). Raises h11.RemoteProtocolError on
        bytes that are not an answer's head."""
        return self._until(h11.Response)

    def whole(self) -> bool:
        """Whether the whole answer is in (False: feed more)."""
        return self._until(h11.EndOfMessage)

    def _until(self, wanted: type) -> bool:
        if wanted is h11.Response and self.resp is not None:
            return True
        while (event := self.parser.next_event()) is not h11.NEED_DATA:
            if isinstance(event, h11.InformationalResponse):
                self.informational.append(event.status_code)
            elif isinstance(event, h11.Response):
                self.resp = Resp(event.status_code, event.reason.decode("latin-1"),
                                 _fields(event.headers), informational=self.informational,
                                 version=event.http_version.decode("latin-1"))
                chunked = (self.resp.header("Transfer-Encoding") or "").lower() == "chunked"
                assert not (chunked and self.resp.header("Content-Length") is not None), \
                    "both Content-Length and chunked"
            elif isinstance(event, h11.Data):
                self.body += event.data
            elif isinstance(event, h11.EndOfMessage):
                self.answer().trailers = _fields(event.headers)
            if isinstance(event, wanted):
                return True
        return False

    def answer(self) -> Resp:
        """The answer: its head, and the body read so far."""
        assert self.resp is not None, "no answer head yet"
        self.resp.body = bytes(self.body)
        return self.resp

    def unread(self) -> bytes:
        """What came after the answer (or its head, if that is all that was read)."""
        return bytes(self.parser.trailing_data[0])


def parse(data: bytes) -> Resp:
    """The one answer in `data`, a connection's bytes up to its close: whole, and nothing
    after it."""
    reading = AnswerReader()
    reading.feed(data)
    reading.feed(b"")
    assert reading.whole(), f"not a whole answer: {data!r}"
    assert not reading.unread(), f"bytes after the answer: {data!r}"
    return reading.answer()


class Reader:
    """A connection's incoming bytes: an asyncio.StreamReader with what the parser read
    ahead put back in front, so that raw reads after a parsed answer miss nothing."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self._stream = stream
        self._ahead = bytearray()

    def unread(self, data: bytes) -> None:
        self._ahead[:0] = data

    async def read(self, n: int = -1) -> bytes:
        if self._ahead:
            taken = bytes(self._ahead if n < 0 else self._ahead[:n])
            del self._ahead[:len(taken)]
            return taken + (await self._stream.read() if n < 0 else b"")
        return await self._stream.read(n)

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        while (at := self._ahead.find(separator)) < 0:
            more = await self._stream.read(READ_SIZE)
            if not more:
                raise asyncio.IncompleteReadError(bytes(self._ahead), None)
            self._ahead += more
        return await self.readexactly(at + len(separator))

    async def readexactly(self, n: int) -> bytes:
        while len(self._ahead) < n:
            more = await self._stream.read(READ_SIZE)
            if not more:
                raise asyncio.IncompleteReadError(bytes(self._ahead), n)
            self._ahead += more
        return await self.read(n)

    def at_eof(self) -> bool:
        return not self._ahead and self._stream.at_eof()


class Conn:
    """One client connection to wakegate over loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = Reader(reader)
        self.writer = writer

    @classmethod
    async def open(cls, wg: Listening, source: str | None = None,
                   rcvbuf: int | None = None) -> Conn:
        if rcvbuf is None:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", wg.proxy_port, local_addr=(source, 0) if source else None)
            return cls(reader, writer)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", wg.proxy_port))
        except BaseException:
            sock.close()
            raise
        reader, writer = await asyncio.open_connection(sock=sock, limit=rcvbuf)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _read(self, coro: Awaitable[T]) -> T:
        return await asyncio.wait_for(coro, IO_DEADLINE)

    async def head(self) -> Resp:
        """The next answer's head, skipping (and recording) 1xx ones; what follows it stays
        unread."""
        return await self.response(head_only=True)

    async def response(self, head_only: bool = False) -> Resp:
        """The next answer (with `head_only`, its head: the answer to HEAD, or one whose
        body a test reads from `reader` itself)."""
        reading = AnswerReader()
        try:
            while not (reading.head() if head_only else reading.whole()):
                reading.feed(await self._read(self.reader.read(READ_SIZE)))
        finally:
            self.reader.unread(reading.unread())
        return reading.answer()

    async def closed_by_server(self) -> bool:
        """True if the server closed the connection (EOF or reset) with nothing more sent."""
        try:
            extra = await self._read(self.reader.read(1))
        except ConnectionResetError:
            return True
        assert extra == b"", f"unexpected bytes after the answer: {extra!r}"
        return True

    def close(self) -> None:
        self.writer.close()


@contextlib.asynccontextmanager
async def connection(wg: Listening, source: str | None = None,
                     rcvbuf: int | None = None) -> AsyncIterator[Conn]:
    """Conn.open(), closed at the end of the block."""
    conn = await Conn.open(wg, source, rcvbuf)
    try:
        yield conn
    finally:
        conn.close()


async def exchange(wg: Listening, data: bytes, head_only: bool = False,
                   source: str | None = None) -> Resp:
    """`data` on a new connection; the first answer."""
    async with connection(wg, source) as conn:
        await conn.send(data)
        return await conn.response(head_only)


async def exchange_bytes(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """`data` on a new connection to 127.0.0.1:port; every byte answered, up to the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
