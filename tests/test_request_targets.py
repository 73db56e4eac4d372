"""The request target never decides where a request goes, on both proxy paths.

Raw requests over loopback sockets, byte for byte as an attacker would send
them, to two real `wakegate up` processes: one with the fast path and one
with WAKEGATE_FAST_PATH=0. A sink listener on a free loopback port stands for
everything that is not a routed endpoint (the controller API, another
instance's replica, any local port): every odd target names it, and the test
asserts that nothing ever connected to it. The service, tests/upstreams/
raw_http.py, echoes the request line it received at any path ending in /echo.
Also here: the HTTP version (505), `OPTIONS *`, `Expect: 100-continue`, and
API keys stripped on every route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from .both_paths import PATHS, both_paths, raw_service
from .conftest import Wakegate
from .raw_client import IO_DEADLINE, Conn, Resp, connection, exchange, request

PUBLIC = "raw.staging.localhost"
PRIVATE = "raw.private.localhost"
MAX_BODY = 4096


def targets_config() -> dict[str, Any]:
    return {
        "environments": {"staging": {"min_replicas": 1, "max_replicas": 1}, "private": {}},
        "services": {"raw": raw_service("staging", "private")},
        "proxy": {"max_body_size": MAX_BODY},
    }


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wakegate]]:
    with both_paths(tmp_path_factory.mktemp("targets"), targets_config(),
                    ("staging", "raw")) as wgs:
        yield wgs


@pytest.fixture(params=PATHS)
def wg(request: pytest.FixtureRequest, gates: dict[str, Wakegate]) -> Wakegate:
    return gates[request.param]


class Sink(asyncio.Protocol):
    """A listener no request may ever reach; it counts every connection it accepts."""

    def __init__(self) -> None:
        self.peers: list[Any] = []
        self.changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peers.append(transport.get_extra_info("peername"))
        self.changed.set()
        transport.close()

    async def accepted_all_until_now(self, port: int) -> list[Any]:
        """Every connection made to it so far: a last one of our own is accepted after
        them (the kernel's accept queue is in order), so it is waited for, no more."""
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        mine = writer.get_extra_info("sockname")
        while mine not in self.peers:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), IO_DEADLINE)
        writer.close()
        return [peer for peer in self.peers if peer != mine]


@contextlib.asynccontextmanager
async def sink() -> AsyncIterator[tuple[int, Sink]]:
    protocol = Sink()
    server = await asyncio.get_running_loop().create_server(lambda: protocol, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], protocol
    finally:
        server.close()
        await server.wait_closed()


def assert_json_error(resp: Resp, status: int, code: str) -> dict[str, Any]:
    assert resp.status == status, resp
    assert resp.header("Content-Type") == "application/json", resp
    body = resp.json()
    assert body["error"] == code and len(body["message"]) > 20, body
    return body  # type: ignore[no-any-return]


def echoed(resp: Resp) -> dict[str, Any]:
    assert resp.status == 200, resp
    return resp.json()  # type: ignore[no-any-return]


async def test_no_target_makes_the_proxy_connect_anywhere_but_the_route(wg: Wakegate) -> None:
    async with sink() as (port, listener):
        at = f"127.0.0.1:{port}"
        refused = [
            # A tunnel to anywhere, on a public and on a private host.
            (request("CONNECT", at, PUBLIC), 405, "method_not_allowed"),
            (request("CONNECT", f"a@{at}", PUBLIC), 405, "method_not_allowed"),
            (request("CONNECT", f"{at}", PRIVATE), 405, "method_not_allowed"),
            # Absolute-form naming another host, or another scheme.
            (request("GET", f"http://{at}/echo", PUBLIC), 400, "ambiguous_host"),
            (request("GET", f"http://{PUBLIC}@{at}/echo", PUBLIC), 400, "ambiguous_host"),
            (request("GET", f"ws://{at}/echo", PUBLIC), 400, "bad_target"),
            (request("GET", f"x://{at}/echo", PUBLIC), 400, "bad_target"),
            (request("GET", f"ws://{PUBLIC}/echo", PUBLIC), 400, "bad_target"),
            # `*` is for OPTIONS only.
            (request("GET", "*", PUBLIC), 400, "bad_request"),
        ]
        for data, status, code in refused:
            resp = await exchange(wg, data)
            body = assert_json_error(resp, status, code)
            if status == 405:
                assert "GET" in (resp.header("Allow") or ""), resp
                assert "CONNECT" not in (resp.header("Allow") or ""), resp
            if code != "bad_request":
                assert body["environment"] in ("staging", "private"), body
        # Authority-form with another method: not a path, refused by the parser or by us.
        resp = await exchange(wg, request("GET", at, PUBLIC))
        assert resp.status == 400 and resp.header("Content-Type") == "application/json", resp
        # Paths that look like hosts reach the routed instance, with one leading slash.
        for target in (f"//{at}/echo?q=1", f"/\\{at}/echo?q=1", f"///\\//{at}/echo?q=1"):
            got = echoed(await exchange(wg, request("GET", target, PUBLIC)))
            assert got["target"] == f"/{at}/echo?q=1", got
        got = echoed(await exchange(wg, request("GET", f"http://{PUBLIC}:1/echo?x=1#f",
                                                PUBLIC)))
        assert got["target"] == "/echo?x=1", got
        got = echoed(await exchange(wg, request("GET", f"HTTP://{PUBLIC.upper()}/echo?x",
                                                PUBLIC)))
        assert got["target"] == "/echo?x", got
        reached = await listener.accepted_all_until_now(port)
        assert reached == [], f"the proxy connected to the sink: {reached}"
    stderr = wg.stderr()
    assert "Traceback" not in stderr and "error handling request" not in stderr, stderr[-3000:]


async def test_options_star_is_answered_by_the_proxy(wg: Wakegate) -> None:
    resp = await exchange(wg, request("OPTIONS", "*", PUBLIC))
    assert (resp.status, resp.body) == (200, b""), resp
    assert "GET" in (resp.header("Allow") or "") and "CONNECT" not in resp.header("Allow"), resp
    # A private host needs its key for this too, and it wakes nothing.
    resp = await exchange(wg, request("OPTIONS", "*", PRIVATE))
    assert_json_error(resp, 401, "unauthorized")
    assert wg.state("private", "raw") == "sleeping"


async def read_status_line(data: bytes, wg: Wakegate) -> tuple[bytes, Resp]:
    async with connection(wg) as conn:
        await conn.send(data)
        line = await asyncio.wait_for(conn.reader.readuntil(b"\r\n"), IO_DEADLINE)
        rest = await asyncio.wait_for(conn.reader.read(), IO_DEADLINE)  # it closes
    head, _, body = rest.partition(b"\r\n\r\n")
    status = int(line.split()[1])
    fields = [tuple(x.strip() for x in h.decode().split(":", 1)) for h in head.split(b"\r\n")
              if h]
    return line, Resp(status, "", fields, body)  # type: ignore[arg-type]


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/1.2", "HTTP/3.0", "HTTP/0.9"])
async def test_versions_other_than_1_0_and_1_1_get_505(wg: Wakegate, version: str) -> None:
    data = f"GET /echo {version}\r\nHost: {PUBLIC}\r\n\r\n".encode()
    line, resp = await read_status_line(data, wg)
    assert line.split()[1] == b"505", line
    assert line.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), line  # never an answer labelled 2.0
    assert json.loads(resp.body)["error"] == "http_version_not_supported", resp
    # The h2c prior-knowledge preface, sent to an HTTP/1 port.
    line, _ = await read_status_line(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", wg)
    assert line.split()[1] in (b"505", b"400"), line


async def test_http_1_0_is_served(wg: Wakegate) -> None:
    async with connection(wg) as conn:
        await conn.send(f"GET /echo HTTP/1.0\r\nHost: {PUBLIC}\r\n\r\n".encode())
        resp = await conn.response()
    assert echoed(resp)["target"] == "/echo"


async def test_api_keys_never_reach_a_service_on_any_route(wg: Wakegate) -> None:
    sent = (("X-API-Key", "wg_private_key_sent_to_a_public_host"),
            ("Authorization", "Bearer wg_another_one"),
            ("X-Other", "kept"))
    got = echoed(await exchange(wg, request("GET", "/echo", PUBLIC, sent)))
    names = {name.lower() for name, _ in got["headers"]}
    assert "x-api-key" not in names and "authorization" not in names, got
    assert ["X-Other", "kept"] in got["headers"], got
    # A bearer token that is not a wakegate key is the service's own business.
    own = (("Authorization", "Bearer eyJhbGciOi.service-token"),)
    got = echoed(await exchange(wg, request("GET", "/echo", PUBLIC, own)))
    assert ["Authorization", "Bearer eyJhbGciOi.service-token"] in got["headers"], got


async def send_head_expecting(wg: Wakegate, head: bytes) -> tuple[Conn, bytes]:
    """Send a head with `Expect: 100-continue`; (the connection, the first line answered)."""
    conn = await Conn.open(wg)
    await conn.send(head)
    line = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), IO_DEADLINE)
    return conn, line


async def test_expect_100_continue(wg: Wakegate) -> None:
    body = b"x" * 1000
    head = (f"POST /echo HTTP/1.1\r\nHost: {PUBLIC}\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    # The go-ahead comes before the client sends its body; then the answer.
    conn, first = await send_head_expecting(wg, head)
    try:
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n", first
        await conn.send(body)
        resp = await conn.response()
    finally:
        conn.close()
    got = echoed(resp)
    assert got["body"] == body.decode() and "expect" not in {n.lower() for n, _ in
                                                             got["headers"]}, got
    # Without the key of a private host: 401 at once, never 100, no body needed; and
    # the connection is closed (what the client sends next is not a request).
    private = head.replace(PUBLIC.encode(), PRIVATE.encode())
    conn, first = await send_head_expecting(wg, private)
    try:
        assert first.startswith(b"HTTP/1.1 401 "), first
        await asyncio.wait_for(conn.reader.read(), IO_DEADLINE)  # the JSON body, then EOF
        assert conn.reader.at_eof()
    finally:
        conn.close()
    # A body over the limit: 413 before it is sent.
    big = (f"POST /echo HTTP/1.1\r\nHost: {PUBLIC}\r\nExpect: 100-continue\r\n"
           f"Content-Length: {MAX_BODY + 1}\r\n\r\n").encode()
    conn, first = await send_head_expecting(wg, big)
    conn.close()
    assert first.startswith(b"HTTP/1.1 413 "), first
    # An expectation wakegate does not know.
    odd = head.replace(b"100-continue", b"gold")
    conn, first = await send_head_expecting(wg, odd)
    conn.close()
    assert first.startswith(b"HTTP/1.1 417 "), first


# --- what an attacker tried (each once a 500, a traceback or a smuggled request) ---


async def test_connect_with_a_body_smuggles_nothing(wg: Wakegate) -> None:
    """An upstream ignores a CONNECT's Content-Length and would take the body for a second
    request, which nobody checked: refused, and the connection closed after the 405."""
    smuggled = f"GET /smuggled/echo HTTP/1.1\r\nHost: {PUBLIC}\r\n\r\n".encode()
    before = (await exchange(wg, request("GET", "/seen?path=/smuggled/echo"))).json()
    data = (f"CONNECT /x HTTP/1.1\r\nHost: {PUBLIC}\r\nContent-Length: {len(smuggled)}"
            "\r\n\r\n").encode() + smuggled
    async with connection(wg) as conn:
        await conn.send(data)
        resp = await conn.response()
        assert_json_error(resp, 405, "method_not_allowed")
        assert await conn.closed_by_server()
    after = (await exchange(wg, request("GET", "/seen?path=/smuggled/echo"))).json()
    assert after == before, "the CONNECT's body reached the service as a request"


async def test_a_content_length_of_thousands_of_digits_is_an_answer_not_a_crash(
    wg: Wakegate,
) -> None:
    for length in ("0" * 4400 + "5", "1" * 5000):
        data = (f"POST /echo HTTP/1.1\r\nHost: {PUBLIC}\r\nContent-Length: {length}\r\n\r\n"
                "hello").encode()
        resp = await exchange(wg, data)
        assert resp.status in (400, 413) and resp.header("Content-Type") == "application/json", \
            resp
    assert "Traceback" not in wg.stderr()


async def test_a_broken_websocket_handshake_is_a_400(wg: Wakegate) -> None:
    for extra in ((), (("Sec-WebSocket-Key", "short"), ("Sec-WebSocket-Version", "13"))):
        data = request("GET", "/ws", PUBLIC, (("Connection", "Upgrade"),
                                              ("Upgrade", "websocket"), *extra))
        assert_json_error(await exchange(wg, data), 400, "bad_request")
    assert "Traceback" not in wg.stderr()


@pytest.mark.parametrize("host", [f"{PUBLIC}\u00a0", f"{PUBLIC}\u2003", f"{PUBLIC}..",
                                  "RAW.STAGING.LOCALHOST\u212a"])
async def test_a_host_is_matched_as_ascii_only(wg: Wakegate, host: str) -> None:
    data = f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    resp = await exchange(wg, data)
    assert_json_error(resp, 404, "no_route")


async def test_forwarding_claims_of_an_untrusted_client_never_reach_the_service(
    wg: Wakegate,
) -> None:
    claims = (("X_Forwarded_For", "6.6.6.6"), ("X-Client-IP", "6.6.6.6"),
              ("X-Forwarded-Port", "1"), ("X-Original-URL", "/admin"),
              ("True-Client-IP", "6.6.6.6"), ("Authorization", "Bearer\twg_a_key_with_a_tab"))
    got = echoed(await exchange(wg, request("GET", "/echo", PUBLIC, claims)))
    names = {name.lower() for name, _ in got["headers"]}
    for name, _ in claims:
        assert name.lower() not in names, got
    assert ["X-Forwarded-For", "127.0.0.1"] in got["headers"], got


async def test_a_method_wakegate_does_not_serve_fast_gets_the_same_answer_on_both(
    gates: dict[str, Wakegate],
) -> None:
    answers = [await exchange(gates[path], request("FOO", "/echo", PUBLIC)) for path in PATHS]
    assert answers[0].status == answers[1].status, answers
