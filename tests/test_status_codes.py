"""Every row of the contract's status table (docs/contract.md), through a real wakegate.

Each test starts its own `wakegate up` with the example service and checks what a
user sees: the status, the JSON error body (`error`, `message`, `environment`,
`service`) and the headers the table promises. Time-based rows use short
configured timeouts (milliseconds), never mocks; every test ends by checking the
proxy still answers a normal request.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from .client import fetch
from .conftest import Wakegate, hello_service, wait_until
from .raw_client import exchange

DEMO = "hello.demo.localhost"
PRIVATE = "hello.private.localhost"
NO_ROUTE = "nothing.nowhere.localhost"
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=20)
SERVER_TIMING = re.compile(r"^coldstart;dur=\d+(\.\d+)?$")


# --- helpers -----------------------------------------------------------------------


def config(
    *,
    environments: dict[str, Any] | None = None,
    proxy: dict[str, Any] | None = None,
    **services: dict[str, Any],
) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "environments": environments if environments is not None else {"private": {}, "demo": {}},
        "services": services or {"hello": hello_service()},
    }
    if proxy:
        cfg["proxy"] = proxy
    return cfg


def assert_error(body: Any, code: str, environment: str | None = None,
                 service: str | None = None) -> None:
    assert isinstance(body, dict), f"expected a JSON error body, got {body!r}"
    assert body.get("error") == code, body
    assert isinstance(body.get("message"), str) and len(body["message"]) > 10, body
    if environment is not None:
        assert body.get("environment") == environment, body
    if service is not None:
        assert body.get("service") == service, body


def assert_retry_after(headers: Any) -> None:
    value = headers.get("Retry-After")
    assert value is not None, f"no Retry-After in {dict(headers)}"
    assert value.isdigit() and int(value) >= 1, value


async def assert_healthy(http: aiohttp.ClientSession, wg: Wakegate) -> None:
    """The proxy itself answers, and a normal request to the demo instance gets 200."""
    status, body, _ = await fetch(http, wg.base, NO_ROUTE, "/healthz")
    assert status == 200, body
    status, body, _ = await fetch(http, wg.base, DEMO, "/")
    assert status == 200, body
    assert body["service"] == "hello"


def assert_json_error(body: bytes, code: str | None = None) -> dict[str, Any]:
    parsed = json.loads(body)
    assert isinstance(parsed.get("error"), str) and parsed["error"], parsed
    assert isinstance(parsed.get("message"), str) and parsed["message"], parsed
    if code is not None:
        assert parsed["error"] == code, parsed
    return parsed


# --- 404: no route; the proxy's own endpoints --------------------------------------


async def test_no_route_is_404_and_admin_paths_are_the_proxys_own(wakegate) -> None:
    wg = wakegate(config())
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        for host in (NO_ROUTE, "hello.staging.localhost", "other.demo.localhost"):
            status, body, headers = await fetch(http, wg.base, host, "/some/path")
            assert status == 404, (host, body)
            assert headers["Content-Type"].startswith("application/json")
            assert_error(body, "no_route")

        # On a Host that is no route, the proxy answers these itself.
        status, body, _ = await fetch(http, wg.base, NO_ROUTE, "/healthz")
        assert status == 200 and body["status"] == "ok", body
        status, body, _ = await fetch(http, wg.base, NO_ROUTE, "/readyz")
        assert status == 200, body
        status, text, headers = await fetch(http, wg.base, NO_ROUTE, "/metrics")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert "wakegate_requests_total" in text
        assert wg.state("demo", "hello") == "sleeping"

        # On a service's host the same paths are the service's: the example
        # has no /metrics, so its catch-all JSON answers, not Prometheus text.
        status, body, headers = await fetch(http, wg.base, DEMO, "/metrics")
        assert isinstance(body, dict), f"proxy's /metrics served on a service host: {body!r}"
        assert body.get("service") == "hello" and body.get("path") == "/metrics", body
        assert headers.get("X-Wakegate-Cold-Start") == "true"
        status, body, _ = await fetch(http, wg.base, DEMO, "/healthz")
        assert (status, body) == (200, "ok")

        await assert_healthy(http, wg)


# --- 401: private instance ---------------------------------------------------------


async def test_private_without_or_with_wrong_key_is_401(wakegate) -> None:
    wg = wakegate(config())
    key = wg.new_keys()["private/hello"]
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        for headers in ({}, {"X-API-Key": "wg_" + "x" * 43},
                        {"Authorization": "Bearer wg_not_the_key"}):
            status, body, resp_headers = await fetch(http, wg.base, PRIVATE, "/", **headers)
            assert status == 401, (headers, body)
            assert resp_headers.get("WWW-Authenticate") == 'ApiKey realm="wakegate"'
            assert_error(body, "unauthorized", "private", "hello")
        # None of that woke it.
        assert wg.state("private", "hello") == "sleeping"

        status, body, _ = await fetch(http, wg.base, PRIVATE, "/", **{"X-API-Key": key})
        assert status == 200, body
        await assert_healthy(http, wg)


# --- cold start ------------------------------------------------------------------


async def test_cold_start_passes_the_upstream_status_with_cold_start_headers(wakegate) -> None:
    wg = wakegate(config())
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        # A path the example answers with 400: the held request gets the
        # upstream's status, not a 200 of the proxy's making.
        status, body, headers = await fetch(http, wg.base, DEMO, "/slow?ms=oops")
        assert status == 400, body
        assert "must be an integer" in body
        assert headers.get("X-Wakegate-Cold-Start") == "true"
        assert SERVER_TIMING.match(headers.get("Server-Timing", "")), headers
        assert float(headers["Server-Timing"].split("=", 1)[1]) > 0

        # Warm now: no cold-start headers.
        status, body, headers = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body
        assert "X-Wakegate-Cold-Start" not in headers
        assert "coldstart" not in headers.get("Server-Timing", "")

        # A second instance's cold start, answered 200.
        key = wg.new_keys()["private/hello"]
        status, body, headers = await fetch(http, wg.base, PRIVATE, "/", **{"X-API-Key": key})
        assert status == 200, body
        assert headers.get("X-Wakegate-Cold-Start") == "true"
        assert SERVER_TIMING.match(headers.get("Server-Timing", "")), headers
        await assert_healthy(http, wg)


# --- 504: not ready within the hold timeout -------------------------------------------


async def test_not_ready_within_hold_timeout_is_504(wakegate) -> None:
    wg = wakegate(config(
        environments={"demo": {"hold_timeout": "300ms"}, "development": {}},
        hello=hello_service(environments=["demo"], env={"HELLO_READY_AFTER_MS": "5000"}),
        ok=hello_service(environments=["development"]),
    ))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        answer = await fetch(http, wg.base, DEMO, "/")
        status, body, _ = answer
        elapsed = answer.seconds
        assert status == 504, body
        assert_error(body, "wake_timeout", "demo", "hello")
        assert 0.3 <= elapsed < 2.0, elapsed

        # The proxy still serves another instance normally (one whose hold
        # timeout, the default, leaves time for a cold start).
        status, body, _ = await fetch(http, wg.base, "ok.development.localhost", "/")
        assert status == 200, body


# --- 503: hold queue full ------------------------------------------------------------


async def test_full_hold_queue_is_503_at_once_and_the_held_ones_succeed(wakegate) -> None:
    wg = wakegate(config(
        environments={"demo": {"hold_queue_size": 2}},
        hello=hello_service(environments=["demo"], env={"HELLO_STARTUP_DELAY_MS": "1500"}),
    ))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        held = [asyncio.create_task(fetch(http, wg.base, DEMO, f"/held/{i}")) for i in range(2)]
        await asyncio.to_thread(
            wait_until, lambda: wg.metric("wakegate_held_requests", environment="demo",
                                          service="hello") == 2,
            10.0, "two requests to be held",
        )
        answer = await fetch(http, wg.base, DEMO, "/third")
        status, body, headers = answer
        elapsed = answer.seconds
        assert status == 503, body
        assert_error(body, "hold_queue_full", "demo", "hello")
        assert_retry_after(headers)
        assert elapsed < 0.5, f"the third request waited {elapsed:.2f}s instead of failing at once"
        assert not any(t.done() for t in held), "the service started too fast for this test"

        for i, task in enumerate(held):
            status, body, headers = await asyncio.wait_for(task, 20)
            assert status == 200, body
            assert body["path"] == f"/held/{i}"
            assert headers.get("X-Wakegate-Cold-Start") == "true"
        await assert_healthy(http, wg)


# --- 503: activation failed -----------------------------------------------------------


async def test_failed_activation_is_503_at_once_not_at_the_hold_timeout(wakegate) -> None:
    wg = wakegate(config(
        environments={"demo": {"hold_timeout": "30s"}},
        broken=hello_service(environments=["demo"], env={"HELLO_EXIT_AT_START": "3"}),
        hello=hello_service(environments=["demo"]),
    ))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        started = time.monotonic()
        results = await asyncio.gather(
            *(fetch(http, wg.base, "broken.demo.localhost", f"/{i}") for i in range(3))
        )
        elapsed = time.monotonic() - started
        assert elapsed < 5.0, f"held requests failed only after {elapsed:.1f}s"
        for status, body, headers in results:
            assert status == 503, body
            assert_error(body, "activation_failed", "demo", "broken")
            assert_retry_after(headers)
        assert "exiting before listening" in wg.log_of("demo", "broken")

        # The next request tries again, and fails again at once.
        started = time.monotonic()
        status, body, headers = await fetch(http, wg.base, "broken.demo.localhost", "/")
        assert status == 503, body
        assert_error(body, "activation_failed", "demo", "broken")
        assert time.monotonic() - started < 5.0
        await assert_healthy(http, wg)


# --- 503: ignored health checker to a sleeping instance ------------------------------------


async def test_ignored_health_checker_gets_503_and_does_not_wake(wakegate) -> None:
    wg = wakegate(config(hello=hello_service(activity={
        "ignore_paths": ["/healthz", "/internal/*"],
        "ignore_user_agents": ["kube-probe"],
    })))

    def still_asleep() -> None:
        assert wg.state("demo", "hello") == "sleeping"
        assert wg.service_pids() == []
        assert wg.log_of("demo", "hello") == "", "a start was attempted"

    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        for path, agent in (("/healthz", "curl/8"), ("/internal/status", "curl/8"),
                            ("/", "kube-probe/1.29"), ("/anything", "Kube-Probe/1.30")):
            status, body, headers = await fetch(http, wg.base, DEMO, path, **{"User-Agent": agent})
            assert status == 503, (path, agent, body)
            assert_error(body, "sleeping", "demo", "hello")
            assert_retry_after(headers)
            still_asleep()

        # Still asleep a moment later: nothing was started in the background.
        # (A negative can only be watched for a while; activation would show
        # within milliseconds, as the wake below does.)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            still_asleep()
            await asyncio.sleep(0.05)

        # A normal request wakes it; then an ignored one is forwarded.
        status, body, headers = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body
        assert headers.get("X-Wakegate-Cold-Start") == "true"
        status, body, _ = await fetch(http, wg.base, DEMO, "/healthz",
                                      **{"User-Agent": "kube-probe/1"})
        assert (status, body) == (200, "ok")
        await assert_healthy(http, wg)


# --- 502 / 504 from the upstream ---------------------------------------------------------


async def test_upstream_reset_is_502_and_upstream_timeout_is_504(wakegate) -> None:
    wg = wakegate(config(proxy={"read_timeout": "300ms"}))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        status, body, _ = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body  # awake, so what follows is the upstream's doing

        for path in ("/reset", "/reset?rst=1"):
            status, body, _ = await fetch(http, wg.base, DEMO, path)
            assert status == 502, (path, body)
            assert_error(body, "upstream_reset", "demo", "hello")

        answer = await fetch(http, wg.base, DEMO, "/slow?ms=2000")
        status, body, _ = answer
        elapsed = answer.seconds
        assert status == 504, body
        assert_error(body, "upstream_timeout", "demo", "hello")
        assert 0.3 <= elapsed < 1.8, elapsed

        # Within the read timeout is fine.
        status, body, _ = await fetch(http, wg.base, DEMO, "/slow?ms=50")
        assert (status, body) == (200, {"slept_ms": 50})
        await assert_healthy(http, wg)


async def test_upstream_that_dies_on_the_request_is_502_not_a_crash_loop(wakegate) -> None:
    """GET /crash: the process exits without answering, a reset before the answer."""
    wg = wakegate(config(environments={"private": {}, "demo": {"hold_timeout": "4s"}}))
    starts = "--- wakegate: starting demo/hello"
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        status, body, _ = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body
        answer = await fetch(http, wg.base, DEMO, "/crash")
        status, body, _ = answer
        elapsed = answer.seconds
        assert status == 502, (body, f"after {elapsed:.1f}s and "
                               f"{wg.log_of('demo', 'hello').count(starts)} starts")
        assert body["error"] == "upstream_reset", body
        assert body["environment"] == "demo" and body["service"] == "hello", body
        assert elapsed < 3.0, elapsed  # well before the 4 s hold timeout
        # The request that killed it was not sent to replica after replica.
        assert wg.log_of("demo", "hello").count(starts) <= 2

        # The next request wakes it again.
        status, body, headers = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body
        assert headers.get("X-Wakegate-Cold-Start") == "true"


# --- 431 / 413 / 400 --------------------------------------------------------------------


async def test_limits_and_malformed_requests(wakegate) -> None:
    wg = wakegate(config(proxy={"max_header_size": "2KiB", "max_body_size": "1KiB"}))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        status, body, _ = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body

        # 431: one header larger than max_header_size.
        big = b"X-Big: " + b"a" * 4096 + b"\r\n"
        resp = await exchange(
            wg, b"GET / HTTP/1.1\r\nHost: " + DEMO.encode() + b"\r\n" + big + b"\r\n"
        )
        status, raw = resp.status, resp.body
        assert status == 431, raw
        assert (resp.header("Content-Type") or "").startswith("application/json")
        assert_json_error(raw)
        # 431: too many headers, each small.
        many = b"".join(b"X-H%d: v\r\n" % i for i in range(300))
        resp = await exchange(
            wg, b"GET / HTTP/1.1\r\nHost: " + DEMO.encode() + b"\r\n" + many + b"\r\n"
        )
        status, raw = resp.status, resp.body
        assert status == 431, raw
        assert_json_error(raw)
        # Just under the limit is fine.
        status, body, _ = await fetch(http, wg.base, DEMO, "/", **{"X-Big": "a" * 1500})
        assert status == 200, body

        # 413: a body larger than max_body_size, declared with Content-Length...
        async with http.post(wg.base + "/echo", headers={"Host": DEMO},
                             data=b"x" * 2048) as r:
            assert r.status == 413, await r.text()
            assert_error(await r.json(), "body_too_large", "demo", "hello")

        # ... and sent chunked, with no length announced. (/slow answers only
        # after 1 s, so the proxy sees the excess before the upstream answers;
        # see the next test for an excess that comes after.)
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"y" * 512

        async with http.post(wg.base + "/slow?ms=1000", headers={"Host": DEMO},
                             data=chunks()) as r:
            assert r.status == 413, await r.text()
            assert_error(await r.json(), "body_too_large", "demo", "hello")
        # At the limit is fine.
        async with http.post(wg.base + "/echo", headers={"Host": DEMO}, data=b"z" * 1024) as r:
            assert r.status == 200
            assert await r.read() == b"z" * 1024

        # 400: malformed requests.
        malformed = {
            "garbage request line": b"THIS IS NOT HTTP AT ALL\r\n\r\n",
            "header without colon": b"GET / HTTP/1.1\r\nHost: " + DEMO.encode()
            + b"\r\nNoColonHere\r\n\r\n",
            "two Host headers": b"GET / HTTP/1.1\r\nHost: " + DEMO.encode() + b"\r\nHost: "
            + PRIVATE.encode() + b"\r\n\r\n",
            "no Host header": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
            "bad Content-Length": b"POST /echo HTTP/1.1\r\nHost: " + DEMO.encode()
            + b"\r\nContent-Length: ten\r\n\r\n",
            "Content-Length and chunked": b"POST /echo HTTP/1.1\r\nHost: " + DEMO.encode()
            + b"\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        }
        for what, data in malformed.items():
            resp = await exchange(wg, data)
            status, raw = resp.status, resp.body
            assert status == 400, (what, raw)
            assert (resp.header("Content-Type") or "").startswith("application/json"), what
            assert_json_error(raw)

        await assert_healthy(http, wg)
        # And a raw, well-formed request on a new connection too.
        resp = await exchange(
            wg, b"GET /raw HTTP/1.1\r\nHost: " + DEMO.encode() + b"\r\nConnection: close\r\n\r\n"
        )
        status, raw = resp.status, resp.body
        assert status == 200 and json.loads(raw)["path"] == "/raw", raw


async def test_body_over_the_limit_after_the_upstream_answered_is_cut_not_left_hanging(
    wakegate,
) -> None:
    """A streamed body that passes max_body_size only after the upstream began to answer.

    The status line is out, so 413 is no longer possible: the proxy must cut the
    exchange at once. Never the whole oversized body echoed back, never a
    response left hanging (not even past the read timeout).
    """
    wg = wakegate(config(proxy={"max_body_size": "1KiB", "read_timeout": "2s"}))
    async with aiohttp.ClientSession(timeout=CLIENT_TIMEOUT) as http:
        status, body, _ = await fetch(http, wg.base, DEMO, "/")
        assert status == 200, body

        answered = asyncio.Event()

        async def body_parts() -> AsyncIterator[bytes]:
            yield b"a" * 512  # within the limit: forwarded, echoed back
            await answered.wait()
            yield b"b" * 2048  # now over the limit

        started = time.monotonic()
        received = b""
        ended_by = "eof"
        async with http.post(wg.base + "/echo", headers={"Host": DEMO},
                             data=body_parts()) as r:
            answered.set()
            if r.status == 413:
                ended_by = "413"
            else:
                try:
                    async with asyncio.timeout(6.0):
                        async for chunk in r.content.iter_any():
                            received += chunk
                except TimeoutError:
                    ended_by = "hang"
                except aiohttp.ClientError:
                    ended_by = "cut"
        elapsed = time.monotonic() - started
        assert ended_by != "hang", (
            f"the response was left hanging for {elapsed:.1f}s after the body passed "
            f"max_body_size ({len(received)} bytes echoed)"
        )
        assert len(received) < 512 + 2048, "the whole oversized body reached the upstream"
        assert elapsed < 5.0, elapsed
        await assert_healthy(http, wg)
