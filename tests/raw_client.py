"""A raw HTTP/1.1 client for tests that care about bytes on the wire, and a wakegate
with the fast path on or off, to run a test against both proxy paths.

Used by tests/test_fastpath.py and tests/test_client_timeouts.py, which both run
tests/upstreams/raw_http.py as the public, always-on service `raw` in `staging`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .conftest import Wakegate, stop_all

# request()'s default Host: raw_http.py as both suites configure it.
HOST = "raw.staging.localhost"
IO_DEADLINE = 5.0  # any single read on a test socket


PATHS = ("fast", "aiohttp")  # WAKEGATE_FAST_PATH=1 and =0
UPSTREAMS = Path(__file__).resolve().parent / "upstreams"
RAW = UPSTREAMS / "raw_http.py"


def upstream_service(script: Path, *environments: str) -> dict[str, Any]:
    """A script of tests/upstreams (run as `script --port PORT`) as a service of a test
    config: always answering on TCP, stopped quickly."""
    return {
        "command": f"{{python}} {script} --port {{port}}",
        "readiness": {"tcp": True},
        "environments": list(environments),
        "stop_grace": "1s",
    }


def raw_service(*environments: str) -> dict[str, Any]:
    """tests/upstreams/raw_http.py as a service of a test config."""
    return upstream_service(RAW, *environments)


@contextlib.contextmanager
def both_paths(tmp: Path, config: dict[str, Any],
               ready: tuple[str, str]) -> Iterator[dict[str, Wakegate]]:
    """Two `wakegate up` with `config`, the fast path on ("fast") and off ("aiohttp"),
    started together and waited for until (environment, service) `ready` is ready;
    stopped by pid at the end (none left behind)."""
    wgs: dict[str, Wakegate] = {
        name: PathWakegate(tmp, copy.deepcopy(config), name, fast_path=name == "fast")
        for name in PATHS
    }
    try:
        with ThreadPoolExecutor(len(wgs)) as pool:
            list(pool.map(lambda wg: wg.start(), wgs.values()))
        for wg in wgs.values():
            wg.wait_state(*ready, "ready", timeout=20.0)
        yield wgs
    finally:
        stop_all(list(wgs.values()))


class PathWakegate(Wakegate):
    """A wakegate with the fast path on or off (WAKEGATE_FAST_PATH)."""

    def __init__(self, tmp: Path, config: dict[str, Any], name: str, fast_path: bool) -> None:
        super().__init__(tmp, config, name)
        self.fast_path = fast_path

    def env(self) -> dict[str, str]:
        env = super().env()
        env["WAKEGATE_FAST_PATH"] = "1" if self.fast_path else "0"
        return env


@dataclass
class Resp:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)
    informational: list[int] = field(default_factory=list)

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        assert len(values) <= 1, f"{name} more than once: {self.headers}"
        return values[0] if values else None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def served_by_aiohttp(self) -> bool:
        return self.header("Server") is not None


def request(method: str, target: str, host: str = HOST, headers: tuple[tuple[str, str], ...] = (),
            body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _fields(block: bytes) -> list[tuple[str, str]]:
    out = []
    for line in block.decode("latin-1").split("\r\n"):
        if line:
            name, sep, value = line.partition(":")
            assert sep, f"a header line without a colon: {line!r}"
            out.append((name, value.strip()))
    return out


class Conn:
    """One client connection to wakegate over loopback."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, wg: Wakegate, source: str | None = None,
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

    async def _read(self, coro: Any) -> Any:
        return await asyncio.wait_for(coro, IO_DEADLINE)

    async def head(self) -> Resp:
        """The next response's head, skipping (and recording) 1xx ones."""
        informational: list[int] = []
        while True:
            raw = await self._read(self.reader.readuntil(b"\r\n\r\n"))
            status_line, _, rest = raw[:-4].partition(b"\r\n")
            version, status, reason = [*status_line.decode("latin-1").split(" ", 2), ""][:3]
            # aiohttp answers an unparsable request as HTTP/1.0.
            assert version in ("HTTP/1.1", "HTTP/1.0"), status_line
            if 100 <= int(status) < 200:
                informational.append(int(status))
                continue
            return Resp(int(status), reason, _fields(rest), informational=informational)

    async def response(self, head_only: bool = False) -> Resp:
        resp = await self.head()
        if head_only or resp.status in (204, 304):
            return resp
        coding = (resp.header("Transfer-Encoding") or "").lower()
        length = resp.header("Content-Length")
        if coding:
            assert coding == "chunked", coding
            assert length is None, "both Content-Length and chunked"
            body = bytearray()
            while True:
                line = await self._read(self.reader.readuntil(b"\r\n"))
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    break
                body += await self._read(self.reader.readexactly(size))
                assert await self._read(self.reader.readexactly(2)) == b"\r\n"
            trailer = bytearray()
            while (line := await self._read(self.reader.readuntil(b"\r\n"))) != b"\r\n":
                trailer += line
            resp.body, resp.trailers = bytes(body), _fields(bytes(trailer))
        elif length is not None:
            resp.body = await self._read(self.reader.readexactly(int(length)))
        else:
            resp.body = await self._read(self.reader.read())  # until the server closes
        return resp

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


async def exchange(wg: Wakegate, data: bytes, head_only: bool = False,
                   source: str | None = None) -> Resp:
    conn = await Conn.open(wg, source)
    try:
        await conn.send(data)
        return await conn.response(head_only)
    finally:
        conn.close()
