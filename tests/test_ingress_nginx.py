"""nginx (the Debian package) as the ingress in front of two wakegate proxies.

One `wakegate controller` and two `wakegate proxy` processes; nginx, run in the
foreground with its own prefix and config in a temp directory, listens on a free
loopback port and balances over both proxies with upstream keepalive. Its
configuration is the one docs/operations.md ("Behind an ingress") shows (NGINX_SERVER),
plus what only a test needs: its own paths, and `proxy_bind 127.0.0.2`, so that
the proxies see nginx at an address of its own, which is wakegate's only
trusted proxy. Clients connect from 127.0.0.3.

Checked through nginx: a held cold start, a private instance's key, a WebSocket
echo, a stream whose first chunk arrives long before its end (no buffering),
and the client address the service sees (X-Forwarded-For set by nginx and
believed; one sent by a client straight to a proxy is not).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .client import Answer, fetch, host
from .conftest import Split, free_port, hello_service
from .ops_stack import Child, accepts, program, running, running_split

NGINX_ADDRESS = "127.0.0.2"  # nginx's source address towards the proxies (trusted)
CLIENT_ADDRESS = "127.0.0.3"  # where the test's clients connect from (not trusted)
SPOOFED = "203.0.113.7"
SLOW_START_MS = 1000
TIMEOUT = aiohttp.ClientTimeout(total=30)

# The server block of docs/operations.md's nginx example, verbatim apart from the
# placeholders: the upstream's servers and the port.
NGINX_SERVER = """\
map $http_upgrade $connection_upgrade {
    default upgrade;
    ''      '';            # no Upgrade: an empty Connection keeps the upstream alive
}

upstream wakegate {
%(servers)s
    keepalive 32;
}

server {
    listen %(listen)s;
    server_name _;                     # every {service}.{environment}.{domain}
    client_max_body_size 64m;          # wakegate enforces max_body_size itself

    location / {
        proxy_pass http://wakegate;
        proxy_http_version 1.1;        # keepalive to wakegate, and WebSockets
        proxy_set_header Host $host;   # wakegate routes by Host
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        # The edge replaces whatever the client claimed; wakegate believes it
        # because nginx's address is in proxy.trusted_proxies.
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Host $http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header Forwarded "";      # an empty value: not sent
        # A request to a sleeping service is held until it is ready, up to
        # hold_timeout (60 s by default): wait longer than that.
        proxy_connect_timeout 5s;
        proxy_read_timeout 120s;
        proxy_send_timeout 120s;
        # Stream both ways: chunks, server-sent events, uploads.
        proxy_buffering off;
        proxy_request_buffering off;
%(extra)s
    }
}
"""


def nginx_conf(directory: Path, listen: str, upstreams: list[str]) -> str:
    temp = {name: directory / name for name in
            ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    server = NGINX_SERVER % {
        "servers": "\n".join(f"    server {u};" for u in upstreams),
        "listen": listen,
        "extra": f"        proxy_bind {NGINX_ADDRESS};   # test only: a trusted address of "
                 "its own",
    }
    # As root (CI), nginx's workers would otherwise run as nobody, who cannot
    # enter pytest's private temp directory.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return f"""\
{user}worker_processes 1;
pid {directory}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 512; }}
http {{
    access_log {directory}/access.log;
    client_body_temp_path {temp['client_body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};

{server}}}
"""


class Stack:
    def __init__(self, sp: Split, nginx: Child, port: int) -> None:
        self.sp = sp
        self.nginx = nginx
        self.base = f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    nginx_bin = program("/usr/sbin/nginx", "nginx")
    tmp = tmp_path_factory.mktemp("ingress")
    config: dict[str, Any] = {
        "proxy": {"trusted_proxies": [f"{NGINX_ADDRESS}/32"]},
        "environments": {"private": {}, "demo": {}},
        "services": {
            "hello": hello_service(environments=["private", "demo"]),
            "sleepy": hello_service(environments=["demo"],
                                    env={"HELLO_STARTUP_DELAY_MS": str(SLOW_START_MS)}),
        },
    }
    with running_split(tmp, config) as sp:
        port = free_port()
        directory = tmp / "nginx"
        directory.mkdir()
        conf = directory / "nginx.conf"
        conf.write_text(nginx_conf(directory, f"127.0.0.1:{port}",
                                   [f"127.0.0.1:{p.port}" for p in sp.proxies]))
        nginx = Child("nginx", [nginx_bin, "-p", str(directory), "-e", "stderr",
                                "-c", str(conf), "-g", "daemon off;"], directory)
        with running(nginx):
            nginx.wait_for(lambda: accepts(port), 10.0, "nginx to listen")
            yield Stack(sp, nginx, port)


def client(address: str = CLIENT_ADDRESS) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        timeout=TIMEOUT, connector=aiohttp.TCPConnector(local_addr=(address, 0)),
    )


async def through(base: str, service: str, environment: str, path: str = "/",
                  **headers: str) -> Answer:
    async with client() as http:
        return await fetch(http, base, host(service, environment), path, **headers)


async def test_cold_start_is_held_through_nginx(stack: Stack) -> None:
    assert stack.sp.state("demo", "sleepy") == "sleeping"
    # Two at once: nginx sends them to both proxies; both are held for one start.
    answers = await asyncio.gather(*(through(stack.base, "sleepy", "demo") for _ in range(2)))
    for answer in answers:
        assert answer.status == 200 and answer.cold, answer
        assert answer.headers["Server-Timing"].startswith("coldstart;dur="), answer
        assert answer.seconds >= SLOW_START_MS / 1000, answer
    assert answers[0].body["pid"] == answers[1].body["pid"]
    assert stack.sp.state("demo", "sleepy") == "ready"
    warm = await through(stack.base, "sleepy", "demo")
    assert warm.status == 200 and not warm.cold, warm


async def test_private_needs_its_key_through_nginx(stack: Stack) -> None:
    key = stack.sp.keys["private/hello"]
    refused = await through(stack.base, "hello", "private")
    assert refused.status == 401, refused
    assert refused.headers["WWW-Authenticate"] == 'ApiKey realm="wakegate"'
    assert refused.body["error"] == "unauthorized", refused
    wrong = await through(stack.base, "hello", "private", **{"X-API-Key": "wg_" + "Q" * 43})
    assert wrong.status == 401, wrong
    assert stack.sp.state("private", "hello") == "sleeping", "a refused request wakes nothing"
    answer = await through(stack.base, "hello", "private", "/headers", **{"X-API-Key": key})
    assert answer.status == 200, answer
    assert not {name.lower() for name in answer.body} & {"x-api-key"}, \
        "the key is not forwarded to the service"
    bearer = await through(stack.base, "hello", "private",
                           Authorization=f"Bearer {key}")
    assert bearer.status == 200 and bearer.body["service"] == "hello", bearer


async def test_websocket_through_nginx(stack: Stack) -> None:
    async with client() as http, http.ws_connect(
        stack.base + "/ws", headers={"Host": "hello.demo.localhost"}, protocols=("echo",),
    ) as ws:
        assert ws.protocol == "echo"
        for i in range(3):
            await ws.send_str(f"hello {i}")
            assert await ws.receive_str(timeout=10) == f"hello {i}"
        await ws.send_bytes(b"\x00\x01binary")
        assert await ws.receive_bytes(timeout=10) == b"\x00\x01binary"


async def test_stream_is_not_buffered_by_nginx(stack: Stack) -> None:
    chunks, interval = 3, 0.5
    async with client() as http, http.get(
        stack.base + f"/stream?chunks={chunks}&interval_ms={int(interval * 1000)}",
        headers={"Host": "hello.demo.localhost"},
    ) as resp:
        assert resp.status == 200
        first = await resp.content.readline()
        first_at = time.monotonic()
        assert first == b"chunk 0\n"
        assert not resp.content.at_eof()
        rest = await resp.content.read()
        ended_at = time.monotonic()
    assert rest == b"".join(f"chunk {i}\n".encode() for i in range(1, chunks))
    # Buffered, the first chunk would come with the last one.
    assert ended_at - first_at >= (chunks - 1) * interval * 0.8, ended_at - first_at


async def test_upload_and_its_echo_stream_at_once_through_nginx(stack: Stack) -> None:
    """The second part of the body is sent only once the echo of the first came back:
    nginx buffering the request (or the response) would stall it."""
    echoed_first = asyncio.Event()
    waited_for_echo: list[bool] = []

    async def body() -> Any:
        yield b"part 1\n"
        try:
            await asyncio.wait_for(echoed_first.wait(), 5.0)
            waited_for_echo.append(True)
        except TimeoutError:
            waited_for_echo.append(False)  # fail below, but finish the request
        yield b"part 2\n"

    async with client() as http, http.post(
        stack.base + "/echo", data=body(),
        headers={"Host": "hello.demo.localhost", "Content-Type": "text/plain"},
    ) as resp:
        assert resp.status == 200
        first = await asyncio.wait_for(resp.content.readline(), 10.0)
        echoed_first.set()
        rest = await resp.content.read()
    assert (first, rest) == (b"part 1\n", b"part 2\n")
    assert waited_for_echo == [True], "the echo of part 1 came only after the whole body"


async def test_the_service_sees_the_client_address_nginx_forwards(stack: Stack) -> None:
    spoof = {"X-Forwarded-For": SPOOFED, "X-Real-IP": SPOOFED,
             "Forwarded": f"for={SPOOFED}"}
    via_nginx = await through(stack.base, "hello", "demo", "/headers", **spoof)
    assert via_nginx.status == 200, via_nginx
    headers = {name.lower(): values for name, values in via_nginx.body.items()}
    # nginx replaced the client's claim with its peer; wakegate believed nginx (a
    # trusted proxy) and appended nginx's own address.
    assert headers["x-forwarded-for"] == [f"{CLIENT_ADDRESS}, {NGINX_ADDRESS}"], headers
    assert headers["x-forwarded-proto"] == ["http"], headers
    assert headers["x-forwarded-host"] == ["hello.demo.localhost"], headers
    assert headers["x-real-ip"] == [CLIENT_ADDRESS], headers
    assert SPOOFED not in str(headers), "nothing the client claimed reaches the service"

    # Straight to a proxy, from an address that is not a trusted proxy: not believed.
    for proxy in stack.sp.proxies:
        async with client() as http:
            direct = await fetch(http, proxy.base, "hello.demo.localhost", "/headers",
                                 **spoof, **{"X-Forwarded-Host": "evil.example"})
        assert direct.status == 200, direct
        headers = {name.lower(): values for name, values in direct.body.items()}
        assert headers["x-forwarded-for"] == [CLIENT_ADDRESS], headers
        assert headers["x-forwarded-host"] == ["hello.demo.localhost"], headers
        assert "x-real-ip" not in headers and "forwarded" not in headers, headers


async def test_nginx_spreads_the_requests_over_both_proxies(stack: Stack) -> None:
    def served() -> list[float]:
        return [p.metric("wakegate_requests_total", environment="demo", service="hello",
                         code="200") or 0.0 for p in stack.sp.proxies]

    before = served()
    for _ in range(4):
        answer = await through(stack.base, "hello", "demo")
        assert answer.status == 200, answer
    after = served()
    assert sum(after) - sum(before) == 4
    assert all(b > a for a, b in zip(before, after, strict=True)), (before, after)
    assert "[emerg]" not in stack.nginx.log() and "[alert]" not in stack.nginx.log(), \
        stack.nginx.log()
