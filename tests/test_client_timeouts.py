"""Client connection timeouts: proxy.header_timeout and proxy.keepalive_timeout.

nginx's client_header_timeout and keepalive_timeout, on both proxy paths: two
real `wakegate up` processes, one with the fast path (proxy/fastpath.py) and
one with WAKEGATE_FAST_PATH=0 (the aiohttp path), started once for the module
with timeouts of a few hundred milliseconds. The service is
tests/upstreams/raw_http.py, public and always on; its `/slow?ms=N` answers
after N ms, longer than both timeouts (read_timeout is high enough for it).

Every wait is a read with a deadline; a test measures when the proxy closed a
connection and checks it was about the timeout, neither at once nor late.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from .both_paths import PATHS, both_paths, raw_service
from .conftest import Wakegate
from .raw_client import HOST, Conn, Resp, connection, parse, request

ENV = "staging"  # public and always on
SERVICE = "raw"  # at raw_client.HOST, raw.staging.localhost
HEADER_TIMEOUT = 0.4
KEEPALIVE_TIMEOUT = 0.6
SLOW_MS = 1500  # an answer that takes longer than both timeouts
EARLY = 0.8  # a timeout is not met before EARLY x its duration
SLACK = 1.0  # nor later than its duration + SLACK (a loaded machine)


def timeouts_config() -> dict[str, Any]:
    return {
        "environments": {ENV: {"min_replicas": 1, "max_replicas": 1}},
        "services": {SERVICE: raw_service(ENV)},
        "proxy": {
            "header_timeout": f"{int(HEADER_TIMEOUT * 1000)}ms",
            "keepalive_timeout": f"{int(KEEPALIVE_TIMEOUT * 1000)}ms",
            "read_timeout": "10s",  # /slow is not cut
            "connect_timeout": "2s",
        },
    }


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wakegate]]:
    """{"fast": ..., "aiohttp": ...}, started together; stopped by pid at the end."""
    with both_paths(tmp_path_factory.mktemp("client_timeouts"), timeouts_config(),
                    (ENV, SERVICE)) as wgs:
        yield wgs


@pytest.fixture(params=PATHS)
def gate(request: pytest.FixtureRequest, gates: dict[str, Wakegate]) -> Wakegate:
    return gates[request.param]


@dataclass
class Closed:
    """What a connection received until the proxy closed it, and when it closed."""

    data: bytes
    at: float  # time.monotonic() of the EOF (or reset)


async def until_closed(conn: Conn, deadline: float) -> Closed:
    """Every byte up to the server's close; fails if it is still open after `deadline` s."""
    data = bytearray()
    end = time.monotonic() + deadline
    while True:
        left = end - time.monotonic()
        try:
            chunk = await asyncio.wait_for(conn.reader.read(65536), max(left, 0.0))
        except ConnectionResetError:
            # Closed with our bytes still unread on its side (a slowloris): a reset.
            return Closed(bytes(data), time.monotonic())
        except TimeoutError:
            raise AssertionError(
                f"the connection was still open after {deadline:.1f}s; got {bytes(data)!r}"
            ) from None
        if not chunk:
            return Closed(bytes(data), time.monotonic())
        data += chunk


def parse_408(data: bytes) -> Resp:
    assert data.partition(b"\r\n")[0] == b"HTTP/1.1 408 Request Timeout", data
    resp = parse(data)  # the whole answer, nothing after it
    assert resp.header("Content-Type") == "application/json", resp
    assert resp.header("Connection") == "close", resp
    assert resp.header("Content-Length") == str(len(resp.body)), resp
    return resp


def assert_408(data: bytes) -> None:
    """The whole 408 and nothing after it."""
    payload = parse_408(data).json()
    assert payload["error"] == "header_timeout", payload
    assert "header_timeout" in payload["message"] and len(payload["message"]) > 30, payload


def assert_about(took: float, timeout: float, what: str) -> None:
    assert EARLY * timeout <= took <= timeout + SLACK, f"{what} after {took:.3f}s"


async def answered(conn: Conn, target: str = "/") -> Resp:
    await conn.send(request("GET", target))
    resp = await conn.response()
    assert resp.status == 200, resp
    return resp


async def closed_when_idle(conn: Conn) -> None:
    """The connection, idle from now on, is closed by the proxy keepalive_timeout later,
    with no byte sent."""
    done = time.monotonic()
    closed = await until_closed(conn, KEEPALIVE_TIMEOUT + SLACK)
    assert closed.data == b"", f"bytes after the answer: {closed.data!r}"
    assert_about(closed.at - done, KEEPALIVE_TIMEOUT, "the idle connection's close")


async def test_a_connection_that_sends_nothing_gets_a_408_then_eof(gate: Wakegate) -> None:
    conn = await Conn.open(gate)
    opened = time.monotonic()
    try:
        closed = await until_closed(conn, HEADER_TIMEOUT + SLACK)
    finally:
        conn.close()
    assert_about(closed.at - opened, HEADER_TIMEOUT, "the 408")
    assert_408(closed.data)


async def test_a_slowloris_is_cut_though_bytes_keep_coming(gate: Wakegate) -> None:
    """A partial head, one more byte every 100 ms: the clock runs from the accept."""
    conn = await Conn.open(gate)
    opened = time.monotonic()

    async def trickle() -> None:
        await conn.send(f"GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: ".encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(100):  # far beyond the timeout, were it not enforced
                await asyncio.sleep(0.1)
                await conn.send(b"a")

    writer = asyncio.create_task(trickle())
    try:
        closed = await until_closed(conn, HEADER_TIMEOUT + SLACK)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        conn.close()
    assert_about(closed.at - opened, HEADER_TIMEOUT, "the slowloris' 408")
    assert_408(closed.data)


async def test_an_idle_keep_alive_connection_is_closed_silently(gate: Wakegate) -> None:
    async with connection(gate) as conn:
        await answered(conn)
        await closed_when_idle(conn)


async def test_an_idle_connection_after_a_hand_off_is_closed_too(
    gates: dict[str, Wakegate],
) -> None:
    """The fast path hands an unknown Host to aiohttp, whose timer takes over."""
    async with connection(gates["fast"]) as conn:
        await answered(conn)
        await conn.send(request("GET", "/", host="nothing.nowhere.localhost"))
        resp = await conn.response()
        assert resp.status == 404 and resp.served_by_aiohttp, resp
        await closed_when_idle(conn)


async def test_a_late_next_head_is_closed_without_a_408(gate: Wakegate) -> None:
    """After an answer the keep-alive clock runs; the first byte of a next head stops it
    and starts that head's own header clock: the close comes header_timeout after that
    byte (later than the keep-alive deadline would have been), with no answer."""
    async with connection(gate) as conn:
        await answered(conn)
        done = time.monotonic()
        await asyncio.sleep(KEEPALIVE_TIMEOUT * 0.75)  # the first byte late in the idle time
        await conn.send(f"GET / HTTP/1.1\r\nHost: {HOST}\r\n".encode())
        first_byte = time.monotonic()
        if first_byte - done >= KEEPALIVE_TIMEOUT:
            pytest.skip("the machine was too slow to send the byte within the idle time")
        closed = await until_closed(conn, HEADER_TIMEOUT + SLACK)
    assert closed.data == b"", f"an answer to a connection that had one: {closed.data!r}"
    assert_about(closed.at - first_byte, HEADER_TIMEOUT, "the late head's close")
    assert closed.at - done > KEEPALIVE_TIMEOUT + 0.1, "closed by the keep-alive clock"


async def test_requests_longer_than_both_timeouts_get_their_answers(gate: Wakegate) -> None:
    """A request in flight is never cut: two in a row on one connection, then idle."""
    async with connection(gate) as conn:
        for i in range(2):
            started = time.monotonic()
            resp = await answered(conn, f"/slow?ms={SLOW_MS}&i={i}")
            assert resp.body == b"ok", resp
            assert time.monotonic() - started >= SLOW_MS / 1000 * 0.9
        await closed_when_idle(conn)


async def test_a_body_slower_than_the_header_timeout_is_still_served(gate: Wakegate) -> None:
    """The head was in time: the body's pace is not the header clock's business."""
    async with connection(gate) as conn:
        data = request("POST", "/echo", body=b"0123456789")
        split = data.index(b"\r\n\r\n") + 4 + 5
        await conn.send(data[:split])
        await asyncio.sleep(HEADER_TIMEOUT * 1.5)
        await conn.send(data[split:])
        resp = await conn.response()
    assert resp.status == 200, resp
    assert resp.json()["body"] == "0123456789", resp


async def test_many_idle_connections_are_all_closed(gate: Wakegate) -> None:
    """50 connections: half never send a byte (408), half idle after an answer."""
    silent: list[tuple[Conn, float]] = []  # and when each was opened
    served: list[tuple[Conn, float]] = []  # and when each had its answer
    try:
        for _ in range(25):
            silent.append((await Conn.open(gate), time.monotonic()))
            conn = await Conn.open(gate)
            served.append((conn, 0.0))
            await answered(conn)
            served[-1] = (conn, time.monotonic())
        closed = await asyncio.gather(
            *(until_closed(c, max(HEADER_TIMEOUT, KEEPALIVE_TIMEOUT) + 2 * SLACK)
              for c, _ in silent + served))
    finally:
        for conn, _ in silent + served:
            conn.close()
    for (_, opened), c in zip(silent, closed[:25], strict=True):
        assert_408(c.data)
        assert EARLY * HEADER_TIMEOUT <= c.at - opened <= HEADER_TIMEOUT + 2 * SLACK
    for (_, done), c in zip(served, closed[25:], strict=True):
        assert c.data == b""
        assert EARLY * KEEPALIVE_TIMEOUT <= c.at - done <= KEEPALIVE_TIMEOUT + 2 * SLACK
