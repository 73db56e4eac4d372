"""What crosses the proxy, as a user of a woken service sees it.

WebSockets, streamed responses, streamed request bodies, hop-by-hop headers,
X-Forwarded-*, upstream keep-alive and plain pass-through of status, headers
and HEAD. Every test runs a real `wakegate up` and real services on loopback.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

from .client import get
from .conftest import Wakegate, hello_service, wait_until

StartWakegate = Callable[..., Wakegate]

DEMO = "demo"
# A failed start shows up in seconds, not after the default 60 s hold.
DEMO_SETTINGS = {"hold_timeout": "15s"}

# A service whose answers show its side of the connection: the peer's port
# tells whether the proxy reused one upstream connection. Any path other than
# /peer is a 404 with a body and a header of the service's own.
PEER_SERVICE = '''\
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path == "/peer":
            body = json.dumps({"pid": os.getpid(), "peer_port": self.client_address[1]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            body = "the service has nothing at " + self.path + "\\n"
            self.send_response(404, "Not Here")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("X-Service-Says", "not-found")
        data = body.encode()
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


def demo_config(**proxy: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "environments": {DEMO: dict(DEMO_SETTINGS)},
        "services": {"hello": hello_service(environments=[DEMO])},
    }
    if proxy:
        config["proxy"] = proxy
    return config


def demo_headers(wg: Wakegate, **extra: str) -> dict[str, str]:
    return {"Host": wg.host("hello", DEMO), **extra}


async def wake(http: aiohttp.ClientSession, wg: Wakegate, service: str = "hello",
               path: str = "/") -> None:
    """A first request, so that the instance is awake for what the test measures."""
    answer = await get(http, wg, service, DEMO, path)
    assert answer.status == 200, answer.text
    assert wg.state(DEMO, service) == "ready"


async def headers_seen(wg: Wakegate, **sent: str) -> dict[str, list[str]]:
    """What demo/hello's /headers saw of a request with the fields `sent` (woken first):
    {lower-case name: values}."""
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        answer = await get(http, wg, "hello", DEMO, "/headers", **sent)
    assert answer.status == 200
    return {name.lower(): values for name, values in answer.body.items()}


def in_flight_is_zero(wg: Wakegate) -> bool:
    return wg.metric("wakegate_requests_in_flight", environment=DEMO, service="hello") in (
        0.0, None)


# --- WebSocket ---


async def test_websocket_echo_text_binary_subprotocol_and_clean_close(
    wakegate: StartWakegate,
) -> None:
    wg = wakegate(demo_config())
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        async with http.ws_connect(wg.base + "/ws", headers=demo_headers(wg),
                                   protocols=("echo",)) as ws:
            assert ws.protocol == "echo", "the subprotocol was not negotiated end to end"
            await ws.send_str("hello through the proxy")
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.TEXT
            assert msg.data == "hello through the proxy"

            payload = bytes(range(256)) * 64
            await ws.send_bytes(payload)
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.BINARY
            assert msg.data == payload

            # Several messages in a row keep their order.
            for i in range(20):
                await ws.send_str(f"m{i}")
            received = [(await ws.receive(timeout=5)).data for _ in range(20)]
            assert received == [f"m{i}" for i in range(20)]

            assert await ws.close() is True
            assert ws.close_code == aiohttp.WSCloseCode.OK
        # The proxy let go of the connection: nothing is in flight any more.
        wait_until(lambda: in_flight_is_zero(wg), 5.0, "the WebSocket to end on the proxy")
        # And the instance still serves ordinary requests afterwards.
        async with http.get(wg.base + "/", headers=demo_headers(wg)) as r:
            assert r.status == 200


async def test_websocket_to_a_sleeping_instance_wakes_it(wakegate: StartWakegate) -> None:
    wg = wakegate(demo_config())
    assert wg.state(DEMO, "hello") == "sleeping"
    async with aiohttp.ClientSession() as http, http.ws_connect(
        wg.base + "/ws", headers=demo_headers(wg), protocols=("echo",),
        timeout=aiohttp.ClientWSTimeout(ws_close=5.0),
    ) as ws:
        assert ws.protocol == "echo"
        assert wg.state(DEMO, "hello") == "ready"
        assert len(wg.service_pids()) == 1
        await ws.send_str("awake?")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "awake?")
        await ws.send_bytes(b"\x00\x01binary")
        msg = await ws.receive(timeout=5)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.BINARY, b"\x00\x01binary")
    assert wg.metric("wakegate_cold_starts_total", environment=DEMO, service="hello",
                     result="success") == 1.0


# --- streaming ---


async def test_streamed_response_is_not_buffered(wakegate: StartWakegate) -> None:
    wg = wakegate(demo_config())
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        sent = time.monotonic()
        async with http.get(wg.base + "/stream?chunks=5&interval_ms=200",
                            headers=demo_headers(wg)) as r:
            assert r.status == 200
            assert "Content-Length" not in r.headers
            lines: list[str] = []
            arrived: list[float] = []
            while True:
                line = await asyncio.wait_for(r.content.readline(), 5)
                if not line:
                    break
                lines.append(line.decode())
                arrived.append(time.monotonic() - sent)
    assert lines == [f"chunk {i}\n" for i in range(5)]
    # The service writes one chunk every 200 ms: 800 ms from first to last.
    # A proxy that buffered the body would deliver them all at once at the end.
    assert arrived[0] < 0.5, f"the first chunk came only after {arrived[0]:.3f}s"
    assert arrived[-1] - arrived[0] >= 0.6, f"chunks arrived bunched together: {arrived}"
    # Not in two bursts either: the middle chunk comes well apart from both ends.
    assert arrived[2] - arrived[0] >= 0.25 and arrived[4] - arrived[2] >= 0.25, arrived


async def test_large_request_body_with_content_length_comes_back_exactly(
    wakegate: StartWakegate,
) -> None:
    wg = wakegate(demo_config())
    body = os.urandom(5 * 1024 * 1024)
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        async with http.post(wg.base + "/echo", data=body, headers=demo_headers(
                wg, **{"Content-Type": "application/x-test-bytes"})) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/x-test-bytes"
            assert r.headers.get("Content-Length") == str(len(body))
            got = await r.read()
    assert len(got) == len(body)
    assert got == body


async def test_chunked_request_body_streams_through_exactly(wakegate: StartWakegate) -> None:
    wg = wakegate(demo_config())
    pieces = [os.urandom(n) for n in (1, 1000, 65536, 300_000, 7, 1_000_000, 12345)]

    async def generate() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece
            await asyncio.sleep(0.005)

    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        async with http.post(wg.base + "/echo", data=generate(),
                             headers=demo_headers(wg)) as r:
            assert r.status == 200
            got = await r.read()
    assert got == b"".join(pieces)


# --- request headers ---


async def test_hop_by_hop_headers_are_removed_and_the_rest_pass(
    wakegate: StartWakegate,
) -> None:
    wg = wakegate(demo_config())
    hops = {
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "1",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "x",
        "Upgrade": "h2c",
    }
    names = await headers_seen(wg, **hops, **{"X-Ordinary": "passes", "Accept-Language": "fr"})
    for hop in ("x-secret-hop", "keep-alive", "te", "proxy-authorization", "upgrade"):
        assert hop not in names, f"{hop} reached the service: {names}"
    # The proxy may speak keep-alive to the service itself, but never forwards
    # the client's Connection header (which named X-Secret-Hop).
    assert all("x-secret-hop" not in v.lower() for v in names.get("connection", [])), names
    assert names["x-ordinary"] == ["passes"]
    assert names["accept-language"] == ["fr"]
    assert names["host"] == [wg.host("hello", DEMO)]


async def test_x_forwarded_from_an_untrusted_client_are_replaced(
    wakegate: StartWakegate,
) -> None:
    wg = wakegate(demo_config())
    host = wg.host("hello", DEMO)
    names = await headers_seen(wg, **{
        "X-Forwarded-For": "1.2.3.4",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "admin.production.localhost"})
    assert names["x-forwarded-for"] == ["127.0.0.1"]
    assert names["x-forwarded-proto"] == ["http"]
    assert names["x-forwarded-host"] == [host]


async def test_x_forwarded_for_from_a_trusted_proxy_is_kept_and_appended(
    wakegate: StartWakegate,
) -> None:
    wg = wakegate(demo_config(trusted_proxies=["127.0.0.1/32"]))
    names = await headers_seen(wg, **{"X-Forwarded-For": "1.2.3.4"})
    assert names["x-forwarded-for"] == ["1.2.3.4, 127.0.0.1"]
    assert names["x-forwarded-proto"] == ["http"]
    assert names["x-forwarded-host"] == [wg.host("hello", DEMO)]


# --- upstream connections ---


async def test_sequential_requests_are_fast_and_served_by_one_replica(
    wakegate: StartWakegate,
) -> None:
    wg = wakegate(demo_config())
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        pids = set()
        started = time.monotonic()
        for i in range(50):
            async with http.get(wg.base + f"/n{i}", headers=demo_headers(wg)) as r:
                assert r.status == 200
                body = await r.json()
                assert body["path"] == f"/n{i}"
                pids.add(body["pid"])
        took = time.monotonic() - started
    assert pids == set(wg.service_pids())
    assert len(pids) == 1
    # Warm requests on loopback take about a millisecond each.
    assert took < 5.0, f"50 warm requests took {took:.2f}s"


async def test_upstream_connection_is_kept_alive(wakegate: StartWakegate, tmp_path: Path) -> None:
    script = tmp_path / "peer.py"
    script.write_text(PEER_SERVICE)
    wg = wakegate({
        "environments": {DEMO: dict(DEMO_SETTINGS)},
        "services": {"peer": {
            "command": f"{{python}} {script}",
            "readiness": {"http": "/peer"},
            "environments": [DEMO],
            "stop_grace": "1s",
        }},
    })
    headers = {"Host": wg.host("peer", DEMO)}
    async with aiohttp.ClientSession() as http:
        await wake(http, wg, "peer", "/peer")
        ports, pids = set(), set()
        for _ in range(50):
            async with http.get(wg.base + "/peer", headers=headers) as r:
                assert r.status == 200
                body = await r.json()
                ports.add(body["peer_port"])
                pids.add(body["pid"])
    assert len(pids) == 1
    # Sequential requests through a keep-alive pool use one upstream connection.
    assert len(ports) == 1, f"the proxy opened {len(ports)} upstream connections for 50 requests"


# --- pass-through ---


async def test_response_headers_head_and_service_404_pass_through(
    wakegate: StartWakegate, tmp_path: Path,
) -> None:
    script = tmp_path / "peer.py"
    script.write_text(PEER_SERVICE)
    config = demo_config()
    config["services"]["peer"] = {
        "command": f"{{python}} {script}",
        "readiness": {"http": "/peer"},
        "environments": [DEMO],
        "stop_grace": "1s",
    }
    wg = wakegate(config)
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        async with http.get(wg.base + "/some/page?q=1", headers=demo_headers(wg)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            get_body = await r.json()
            assert get_body["path"] == "/some/page?q=1"

        async with http.head(wg.base + "/some/page", headers=demo_headers(wg)) as r:
            assert r.status == 200
            assert r.headers["Content-Type"] == "application/json; charset=utf-8"
            assert await r.read() == b""

        await wake(http, wg, "peer", "/peer")
        async with http.get(wg.base + "/missing",
                            headers={"Host": wg.host("peer", DEMO)}) as r:
            assert r.status == 404
            assert r.reason == "Not Here"
            assert r.headers["Content-Type"] == "text/plain; charset=utf-8"
            assert r.headers["X-Service-Says"] == "not-found"
            assert await r.text() == "the service has nothing at /missing\n"

        # wakegate's own 404 (no route) is JSON; the service's is not rewritten into it.
        async with http.get(wg.base + "/missing",
                            headers={"Host": wg.host("nobody", DEMO)}) as r:
            assert r.status == 404
            assert (await r.json())["error"] == "no_route"


async def test_echo_sizes_around_the_buffering_limit(wakegate: StartWakegate) -> None:
    """Bodies small enough to be buffered and ones that are streamed: all arrive whole."""
    wg = wakegate(demo_config())
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        for size in (0, 1, 65535, 65536, 65537, 1_000_000):
            body = os.urandom(size)
            async with http.post(wg.base + "/echo", data=body, headers=demo_headers(wg)) as r:
                assert r.status == 200, size
                assert await r.read() == body, size
