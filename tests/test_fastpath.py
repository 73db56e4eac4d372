"""The protocol-level warm path (proxy/fastpath.py), byte by byte, as a client sees it.

A public, always-on service runs tests/upstreams/raw_http.py, whose paths give
the framing edge cases: chunked, until-close, 1xx, HEAD, big bodies, resets,
garbage, slow answers. Requests go over raw loopback sockets where framing
matters (pipelining, split writes, HEAD, EOF), through two real `wakegate up`
processes: one with the fast path and one with WAKEGATE_FAST_PATH=0, the
aiohttp path, to compare what the service receives. Both are started once for
the module. Both trust 127.0.0.1/32; an untrusted client connects from
127.0.0.2 (also loopback on Linux).

How a test tells which path answered: aiohttp's server adds a `Server` header,
the fast path passes the service's head, and raw_http sends none. The raw client
is tests/raw_client.py; the two-path wakegate, tests/both_paths.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .both_paths import both_paths, raw_service
from .conftest import Wakegate, wait_until
from .raw_client import IO_DEADLINE, Conn, Resp, connection, exchange, request

ENV = "staging"  # public and always on
SERVICE = "raw"
HOST = f"{SERVICE}.{ENV}.localhost"
READ_TIMEOUT = 1.0  # the proxy's read_timeout: what /slow and a stalled reader are measured by
UNTRUSTED = "127.0.0.2"  # a loopback source address outside trusted_proxies
BIG_BLOCK = bytes(range(256)) * 256  # raw_http's /big repeats this


def raw_config() -> dict[str, Any]:
    return {
        "environments": {ENV: {"min_replicas": 1, "max_replicas": 1}},
        "services": {SERVICE: raw_service(ENV)},
        "proxy": {
            "read_timeout": f"{int(READ_TIMEOUT * 1000)}ms",
            "connect_timeout": "2s",
            "trusted_proxies": ["127.0.0.1/32"],
        },
    }


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wakegate]]:
    """{"fast": ..., "aiohttp": ...}, started together; stopped by pid at the end."""
    with both_paths(tmp_path_factory.mktemp("fastpath"), raw_config(), (ENV, SERVICE)) as wgs:
        yield wgs


@pytest.fixture
def fast(gates: dict[str, Wakegate]) -> Wakegate:
    return gates["fast"]


def assert_ok(resp: Resp) -> None:
    assert (resp.status, resp.body) == (200, b"ok"), resp


def assert_error(resp: Resp, status: int, code: str) -> None:
    assert resp.status == status, resp
    assert resp.header("Content-Type") == "application/json", resp
    body = resp.json()
    assert body["error"] == code, body
    assert (body["environment"], body["service"]) == (ENV, SERVICE), body
    assert len(body["message"]) > 10, body


async def assert_serves(wg: Wakegate) -> None:
    """wakegate still answers a plain request on a new connection."""
    assert_ok(await exchange(wg, request("GET", "/")))


def metric(wg: Wakegate, name: str, **labels: str) -> float:
    return wg.metric(name, environment=ENV, service=SERVICE, **labels) or 0.0


# --- tests ----------------------------------------------------------------------------


async def test_the_fast_wakegate_serves_simple_requests_on_the_fast_path(
    gates: dict[str, Wakegate],
) -> None:
    """What the other tests rely on: which path each wakegate takes."""
    fast = await exchange(gates["fast"], request("GET", "/"))
    assert_ok(fast)
    assert not fast.served_by_aiohttp, fast
    slow = await exchange(gates["aiohttp"], request("GET", "/"))
    assert_ok(slow)
    assert slow.served_by_aiohttp, slow


async def test_pipelined_requests_get_their_answers_in_order(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/echo?n=1")
                        + request("POST", "/echo?n=2", body=b"second")
                        + request("GET", "/echo?n=3"))
        answers = [await conn.response() for _ in range(3)]
        assert [a.status for a in answers] == [200, 200, 200], answers
        seen = [(a.json()["method"], a.json()["target"], a.json()["body"]) for a in answers]
        assert seen == [("GET", "/echo?n=1", ""), ("POST", "/echo?n=2", "second"),
                        ("GET", "/echo?n=3", "")]
        assert not any(a.served_by_aiohttp for a in answers)
        # The connection stays open for more.
        await conn.send(request("GET", "/"))
        assert_ok(await conn.response())


async def test_chunked_answer_arrives_intact_and_the_connection_is_kept(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/chunked"))
        resp = await conn.response()
        assert resp.status == 200, resp
        assert resp.header("Transfer-Encoding") == "chunked"
        assert resp.body == b"hello world"
        assert resp.trailers in ([], [("X-Checksum", "42")]), resp.trailers
        for _ in range(2):  # keep-alive after a chunked answer, twice
            await conn.send(request("GET", "/"))
            assert_ok(await conn.response())
        await conn.send(request("GET", "/chunked"))
        assert (await conn.response()).body == b"hello world"


async def test_answer_without_length_ends_with_the_connection(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/close"))
        resp = await conn.head()
        assert resp.status == 200, resp
        assert resp.header("Content-Length") is None and resp.header("Transfer-Encoding") is None
        assert (resp.header("Connection") or "").lower() == "close", resp
        body = await asyncio.wait_for(conn.reader.read(), IO_DEADLINE)  # to EOF
        assert body == b"until the end"
        assert conn.reader.at_eof()
    await assert_serves(fast)


async def test_early_hints_then_the_final_answer(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/hints"))
        resp = await conn.response()
        assert resp.informational in ([], [103]), resp
        assert (resp.status, resp.body) == (200, b"hints"), resp
        await conn.send(request("GET", "/hints"))
        assert (await conn.response()).body == b"hints"


async def test_head_sends_no_body_keeps_the_length_and_the_connection(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/echo"))
        # The echo names the method: one letter more for HEAD than for GET.
        head_length = len((await conn.response()).body) + 1
        for target, length in (("/echo", head_length), ("/", 2), ("/hints", 5)):
            await conn.send(request("HEAD", target))
            resp = await conn.response(head_only=True)
            assert resp.status == 200, resp
            assert resp.header("Content-Length") == str(length), (target, resp)
            # Were a body sent after the head, it would be read as the next status line.
            await conn.send(request("GET", "/"))
            assert_ok(await conn.response())
        # HEAD on a chunked resource: the head only, and the connection stays usable.
        await conn.send(request("HEAD", "/chunked") + request("GET", "/"))
        assert (await conn.response(head_only=True)).status == 200
        assert_ok(await conn.response())


async def test_big_answer_to_a_slow_reader_is_complete(fast: Wakegate) -> None:
    """4 MiB through a client with a small receive window that reads in small pieces and
    stalls longer than read_timeout once: flow control holds the upstream, nothing is cut,
    and the upstream connection is fit for the next requests."""
    n = 4 * 1024 * 1024
    async with connection(fast, rcvbuf=16 * 1024) as conn:
        await conn.send(request("GET", "/big"))
        resp = await conn.head()
        assert resp.status == 200, resp
        assert resp.header("Content-Length") == str(n)
        # A stalled reader is not an upstream that stopped answering.
        await asyncio.sleep(READ_TIMEOUT * 1.5)
        got = bytearray()
        pieces = 0
        while len(got) < n:
            piece = await asyncio.wait_for(conn.reader.read(min(32 * 1024, n - len(got))),
                                           IO_DEADLINE)
            assert piece, f"the connection ended after {len(got)} of {n} bytes"
            got += piece
            pieces += 1
            if pieces % 4 == 0:
                await asyncio.sleep(0.002)
        assert bytes(got) == BIG_BLOCK * (n // len(BIG_BLOCK))
        # The same connection, then new ones (they take the pooled upstream connections).
        await conn.send(request("GET", "/echo"))
        assert (await conn.response()).status == 200
    for _ in range(3):
        resp = await exchange(fast, request("GET", "/echo"))
        assert resp.status == 200, resp


async def test_a_client_that_stops_reading_does_not_stall_anyone_else(fast: Wakegate) -> None:
    """A client that sends requests but reads none: its answers (about 60 kB each, one
    write each upstream) pile up until the proxy must stop reading upstream for it.
    The pooled upstream connections stay fit for other clients all along, and the
    stalled client, once it reads, gets every answer whole and in order."""
    body = b"x" * 60_000
    done = await asyncio.to_thread(metric, fast, "wakegate_requests_total", code="200")
    wmem_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    stalled = await Conn.open(fast, rcvbuf=4096)
    sent = 0
    held = False
    try:
        # Enough to fill every buffer on the way (the kernel's send buffer, at most
        # tcp_wmem's maximum, and the proxy's own), one request at a time.
        while sent * len(body) < 2 * wmem_max + 2 * 1024 * 1024:
            await stalled.send(request("POST", f"/echo?i={sent}", body=body))
            sent += 1
            try:
                await asyncio.to_thread(
                    wait_until,
                    lambda n=done + 1: metric(fast, "wakegate_requests_total", code="200") >= n,
                    0.3, "the stalled client's answer to be out")
            except AssertionError:
                held = True  # the proxy holds this one upstream until the client reads
                break
            done += 1
            # Another client, meanwhile: its request takes the pooled connection
            # the stalled client's request just gave back.
            other = await exchange(fast, request("GET", "/echo?other"))
            assert other.status == 200, (sent, other)
            done += 1
        assert held, f"the proxy buffered {sent * len(body)} bytes for a client reading none"
        for i in range(sent):
            resp = await stalled.response()
            assert resp.status == 200, (i, resp)
            seen = resp.json()
            assert (seen["target"], len(seen["body"])) == (f"/echo?i={i}", len(body)), i
    finally:
        stalled.close()
    await assert_serves(fast)


async def seen(wg: Wakegate, path: str) -> int:
    """How many requests for `path` the service has received."""
    return int((await exchange(wg, request("GET", f"/seen?path={path}"))).json()["count"])


@pytest.mark.parametrize("path", ["fast", "aiohttp"])
async def test_reset_before_answering_is_a_502(gates: dict[str, Wakegate], path: str) -> None:
    wg = gates[path]
    before = await seen(wg, "/reset")
    assert_error(await exchange(wg, request("POST", "/reset", body=b"payload")), 502,
                 "upstream_reset")
    assert await seen(wg, "/reset") == before + 1, "a POST must never be sent twice"
    # Idempotent and body-less: sent once more on a new connection; the service still
    # listens, so it is this request it breaks on: the same answer, no third try.
    assert_error(await exchange(wg, request("GET", "/reset")), 502, "upstream_reset")
    assert await seen(wg, "/reset") == before + 3
    assert wg.state(ENV, SERVICE) == "ready"  # nothing was taken for gone
    assert "refused a connection" not in wg.stderr()
    await assert_serves(wg)


async def test_garbage_from_the_upstream_is_a_502(fast: Wakegate) -> None:
    assert_error(await exchange(fast, request("GET", "/garbage")), 502, "upstream_invalid")
    await assert_serves(fast)


async def test_slow_upstream_is_a_504_after_read_timeout(fast: Wakegate) -> None:
    before = await asyncio.to_thread(metric, fast, "wakegate_requests_total", code="504")
    started = time.monotonic()
    resp = await exchange(fast, request("GET", "/slow?ms=3000"))
    took = time.monotonic() - started
    assert_error(resp, 504, "upstream_timeout")
    assert READ_TIMEOUT * 0.9 <= took < 2.5, took
    after = await asyncio.to_thread(metric, fast, "wakegate_requests_total", code="504")
    assert after == before + 1
    await assert_serves(fast)


async def test_client_that_leaves_mid_request_is_a_499(fast: Wakegate) -> None:
    before = await asyncio.to_thread(metric, fast, "wakegate_requests_total", code="499")
    conn = await Conn.open(fast)
    await conn.send(request("GET", "/slow?ms=3000"))
    try:
        await asyncio.to_thread(
            wait_until, lambda: metric(fast, "wakegate_requests_in_flight") == 1.0,
            READ_TIMEOUT * 0.8, "the request to be in flight")
    finally:
        conn.writer.transport.abort()

    def counted() -> bool:
        return (metric(fast, "wakegate_requests_total", code="499") == before + 1
                and metric(fast, "wakegate_requests_in_flight") == 0.0)

    await asyncio.to_thread(wait_until, counted, IO_DEADLINE, "the 499 to be counted")
    await assert_serves(fast)


ECHO_HEADERS = (
    ("User-Agent", "fastpath-test"),
    ("X-Forwarded-For", "203.0.113.9"),
    ("X-Forwarded-For", "198.51.100.7"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "public.example"),
    ("X-Real-IP", "203.0.113.9"),
    ("Forwarded", "for=203.0.113.9;proto=https"),
    ("Connection", "keep-alive, X-Hop"),
    ("X-Hop", "secret"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("TE", "trailers"),
    ("Proxy-Authorization", "Basic eA=="),
    ("X-Ordinary", "passes"),
)


async def _echoed(wg: Wakegate, source: str | None) -> tuple[Counter[tuple[str, str]], Resp]:
    resp = await exchange(wg, request("GET", "/echo?q=1", headers=ECHO_HEADERS), source=source)
    assert resp.status == 200, resp
    seen = resp.json()
    assert (seen["method"], seen["target"], seen["body"]) == ("GET", "/echo?q=1", "")
    return Counter((k.lower(), v) for k, v in seen["headers"]), resp


@pytest.mark.parametrize("trusted", [False, True], ids=["untrusted", "trusted"])
async def test_forwarded_headers_are_the_same_on_both_paths(
    gates: dict[str, Wakegate], trusted: bool,
) -> None:
    source = None if trusted else UNTRUSTED
    fast, fast_resp = await _echoed(gates["fast"], source)
    slow, slow_resp = await _echoed(gates["aiohttp"], source)
    assert not fast_resp.served_by_aiohttp and slow_resp.served_by_aiohttp
    assert fast == slow, f"fast path only: {fast - slow}; aiohttp path only: {slow - fast}"

    names = {name for name, _ in fast}
    for hop in ("connection", "x-hop", "keep-alive", "proxy-connection", "te",
                "proxy-authorization"):
        assert hop not in names, fast
    assert fast[("host", HOST)] == 1 and fast[("x-ordinary", "passes")] == 1
    forwarded = {name: value for name, value in fast if name.startswith("x-forwarded-")}
    if trusted:
        assert forwarded == {"x-forwarded-for": "203.0.113.9, 198.51.100.7, 127.0.0.1",
                             "x-forwarded-proto": "https",
                             "x-forwarded-host": "public.example"}, fast
        assert fast[("x-real-ip", "203.0.113.9")] == 1
        assert fast[("forwarded", "for=203.0.113.9;proto=https")] == 1
    else:
        assert forwarded == {"x-forwarded-for": UNTRUSTED, "x-forwarded-proto": "http",
                             "x-forwarded-host": HOST}, fast
        assert "x-real-ip" not in names and "forwarded" not in names, fast
    assert sum(n == "x-forwarded-for" for n, _ in fast.elements()) == 1, fast


async def test_handed_off_requests_get_the_status_table_answers(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/"))
        first = await conn.response()
        assert_ok(first)
        assert not first.served_by_aiohttp
        # Unknown host: handed to the aiohttp server on the same connection.
        await conn.send(request("GET", "/", host="nothing.nowhere.localhost"))
        resp = await conn.response()
        assert resp.status == 404, resp
        assert resp.json()["error"] == "no_route"
        assert resp.served_by_aiohttp
        # Still a keep-alive connection, and it still reaches the service.
        await conn.send(request("GET", "/"))
        assert_ok(await conn.response())
        # A malformed header line: 400, and the connection is closed.
        await conn.send(b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\n"
                        b"this is not a header\r\n\r\n")
        resp = await conn.response()
        assert resp.status == 400, resp
        assert resp.json()["error"] == "bad_request"
        assert await conn.closed_by_server()
    await assert_serves(fast)


async def test_pipelined_mix_of_fast_and_handed_off_requests(fast: Wakegate) -> None:
    """The hand-off carries every byte not yet served, after a fast answer."""
    async with connection(fast) as conn:
        await conn.send(request("GET", "/echo?n=1")
                        + request("GET", "/", host="nothing.nowhere.localhost")
                        + request("GET", "/echo?n=3"))
        first, second, third = [await conn.response() for _ in range(3)]
        assert first.json()["target"] == "/echo?n=1"
        assert second.status == 404 and second.json()["error"] == "no_route"
        assert third.json()["target"] == "/echo?n=3"


async def test_body_arriving_after_the_head_is_forwarded_whole(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        for _ in range(2):  # on a new connection, then on a kept-alive one
            data = request("POST", "/echo", body=b"0123456789")
            head_len = data.index(b"\r\n\r\n") + 4
            await conn.send(data[:head_len])
            await asyncio.sleep(0.05)  # two TCP writes
            await conn.send(data[head_len:])
            resp = await conn.response()
            assert resp.status == 200, resp
            seen = resp.json()
            assert (seen["method"], seen["body"]) == ("POST", "0123456789"), seen
            assert ("Content-Length", "10") in [tuple(h) for h in seen["headers"]], seen
            assert not resp.served_by_aiohttp


async def test_conflicting_content_lengths_are_a_400_on_both_paths(
    gates: dict[str, Wakegate],
) -> None:
    """Were the first one believed upstream and the second here, the rest of the body
    would reach the service as a request of its own."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 0\r\n"
            f"Content-Length: {len(smuggled)}\r\n\r\n").encode() + smuggled
    for name, wg in gates.items():
        async with connection(wg) as conn:
            await conn.send(data)
            resp = await conn.response()
            assert resp.status == 400, (name, resp)
            assert resp.json()["error"] == "bad_request", (name, resp)
            assert await conn.closed_by_server()
    await assert_serves(gates["fast"])


async def test_connection_close_from_the_client(fast: Wakegate) -> None:
    async with connection(fast) as conn:
        await conn.send(request("GET", "/") + request("GET", "/echo", headers=(
            ("Connection", "close"),)) + request("GET", "/never"))
        assert_ok(await conn.response())
        resp = await conn.response()
        assert resp.status == 200 and resp.json()["target"] == "/echo", resp
        assert (resp.header("Connection") or "").lower() == "close", resp
        assert await conn.closed_by_server()  # and the request after it is not served


async def test_the_aiohttp_client_sees_the_same_on_both_paths(
    gates: dict[str, Wakegate],
) -> None:
    """A keep-alive aiohttp client, mixed paths: same statuses and bodies either way."""
    paths = ("/", "/chunked", "/close", "/hints", "/echo", "/big?n=100000")
    seen: dict[str, list[tuple[int, bytes]]] = {}
    for name, wg in gates.items():
        async with aiohttp.ClientSession() as http:
            got = []
            for path in paths:
                async with http.get(wg.base + path, headers={"Host": HOST}) as r:
                    body = await r.read()
                    if path == "/echo":
                        body = json.loads(body)["target"].encode()
                    got.append((r.status, body))
            seen[name] = got
    assert seen["fast"] == seen["aiohttp"]
    assert [s for s, _ in seen["fast"]] == [200] * len(paths)


async def test_connection_naming_a_framing_header_smuggles_nothing(
    gates: dict[str, Wakegate],
) -> None:
    """`Connection: content-length` must not drop the length that frames the body we send:
    the service would read no body and take it as a request of its own."""
    smuggled = b"GET /echo?smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = request("POST", "/echo", headers=(("Connection", "content-length"),),
                   body=smuggled)
    for name, wg in gates.items():
        async with connection(wg) as conn:
            await conn.send(data)
            resp = await conn.response()
            assert resp.status == 200, (name, resp)
            seen = resp.json()
            assert seen["body"] == smuggled.decode(), (name, seen)
            # The next request on the connection gets its own answer, not the
            # answer to a smuggled one.
            await conn.send(request("GET", "/echo?second"))
            second = await conn.response()
            assert second.json()["target"] == "/echo?second", (name, second)


async def test_chunk_sizes_are_parsed_strictly(fast: Wakegate) -> None:
    """A chunk size that is not plain hex (`0x5`) is a broken answer: a 502 when nothing of
    it went out yet, else cut; the connection is never reused."""
    async with connection(fast) as conn:
        await conn.send(request("GET", "/badchunk"))
        resp = await conn.response(head_only=True)
        if resp.status == 502:
            assert resp.header("Content-Type") == "application/json", resp
            assert resp.header("Connection") == "close", resp
        else:  # the head came in a packet of its own and went out before the body
            assert resp.status == 200, resp
            assert await conn.closed_by_server(), "the broken answer must be cut"
    await assert_serves(fast)
