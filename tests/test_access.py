"""Private access through a real wakegate: who gets in, with which key, and by no other way.

docs/contract.md: a private instance needs the service's API key, read from `X-API-Key`
or `Authorization: Bearer`, never from the query string; the key is validated
against stored SHA-256 hashes, stripped before forwarding, and never appears in
logs or metrics; only the Host header picks the route.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import aiohttp

from .client import fetch
from .conftest import Wakegate, hello_service
from .raw_client import exchange

DEMO = "hello.demo.localhost"
PRIVATE = "hello.private.localhost"
KEY_SHAPE = re.compile(r"^wg_[A-Za-z0-9_-]{32,}$")
WRONG_KEY = "wg_" + "Q" * 43
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=20)


# --- helpers -----------------------------------------------------------------------


def start(wakegate: Any) -> tuple[Wakegate, str]:
    wg = wakegate({"environments": {"private": {}, "demo": {}},
                   "services": {"hello": hello_service()}})
    return wg, wg.new_keys()["private/hello"]


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=CLIENT_TIMEOUT)


def assert_unauthorized(status: int, body: Any, headers: Any) -> None:
    assert status == 401, body
    assert headers.get("WWW-Authenticate") == 'ApiKey realm="wakegate"'
    assert body["error"] == "unauthorized", body
    assert body["environment"] == "private" and body["service"] == "hello", body
    assert isinstance(body.get("message"), str) and body["message"], body


def header_names(echoed: dict[str, Any]) -> set[str]:
    """Lower-case names of the headers the example's /headers saw."""
    return {name.lower() for name in echoed if name != "remote"}


def raw_get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", *headers, "Connection: close", "", ""]
    return "\r\n".join(lines).encode()


# --- the key, and where it may come from -------------------------------------------


async def test_private_needs_its_key_in_a_header_never_in_the_query(wakegate) -> None:
    wg, key = start(wakegate)
    async with session() as http:
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE))
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE, **{"X-API-Key": WRONG_KEY}))
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE,
                                         Authorization=f"Bearer {WRONG_KEY}"))
        # A valid key, but not as a bearer token.
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE, Authorization=f"Basic {key}"))
        # A valid key in the query string is refused, and the message says why.
        for name in ("api_key", "key"):
            status, body, headers = await fetch(http, wg.base, PRIVATE, f"/?{name}={key}")
            assert_unauthorized(status, body, headers)
            assert "query string" in body["message"], body
        assert wg.state("private", "hello") == "sleeping"

        status, body, _ = await fetch(http, wg.base, PRIVATE, "/", **{"X-API-Key": key})
        assert status == 200, body
        assert body["service"] == "hello"
        status, body, _ = await fetch(http, wg.base, PRIVATE, "/", Authorization=f"Bearer {key}")
        assert status == 200, body
        status, body, _ = await fetch(http, wg.base, PRIVATE, "/", Authorization=f"bearer {key}")
        assert status == 200, body


async def test_the_key_is_not_forwarded_upstream_other_headers_are(wakegate) -> None:
    wg, key = start(wakegate)
    async with session() as http:
        status, seen, _ = await fetch(http, wg.base, PRIVATE, "/headers",
                                      **{"X-API-Key": key, "X-Trace": "abc", "Accept": "x/y"})
        assert status == 200, seen
        assert "x-api-key" not in header_names(seen), seen
        assert seen.get("X-Trace") == ["abc"] and seen.get("Accept") == ["x/y"], seen
        assert key not in json.dumps(seen)

        status, seen, _ = await fetch(http, wg.base, PRIVATE, "/headers",
                                      Authorization=f"Bearer {key}", **{"X-Trace": "def"})
        assert status == 200, seen
        assert not header_names(seen) & {"authorization", "x-api-key"}, seen
        assert seen.get("X-Trace") == ["def"], seen
        assert key not in json.dumps(seen)

        # Sent both ways at once: it reaches the upstream in neither.
        status, seen, _ = await fetch(http, wg.base, PRIVATE, "/headers",
                                      Authorization=f"Bearer {key}", **{"X-API-Key": key})
        assert status == 200, seen
        assert key not in json.dumps(seen), f"the key was forwarded upstream: {seen}"


async def test_demo_needs_no_key(wakegate) -> None:
    wg, _ = start(wakegate)
    async with session() as http:
        status, body, _ = await fetch(http, wg.base, DEMO)
        assert status == 200, body
        assert body["service"] == "hello"
        # Headers a public service's callers send for their own reasons pass.
        status, seen, _ = await fetch(http, wg.base, DEMO, "/headers",
                                      Authorization="Bearer theirs")
        assert status == 200, seen
        assert seen.get("Authorization") == ["Bearer theirs"], seen
        assert wg.state("private", "hello") == "sleeping"


# --- no other way in ---------------------------------------------------------------


async def test_other_ways_to_the_private_instance_need_the_key(wakegate) -> None:
    wg, key = start(wakegate)
    port = wg.proxy_port
    spellings = ("HELLO.PRIVATE.LOCALHOST", "hello.private.localhost.",
                 f"hello.private.localhost:{port}", f"Hello.Private.Localhost.:{port}")
    async with session() as http:
        # The demo Host, but an absolute-form target naming the private host.
        resp = await exchange(wg, raw_get("http://hello.private.localhost/", f"Host: {DEMO}"))
        status, body = resp.status, resp.json()
        assert status == 400, body
        assert body["error"] == "ambiguous_host", body
        # The private host as the target and as the Host: still needs the key.
        resp = await exchange(wg, raw_get("http://hello.private.localhost/", f"Host: {PRIVATE}"))
        status, body = resp.status, resp.json()
        assert status == 401 and body["error"] == "unauthorized", body

        # X-Forwarded-Host never picks the route.
        status, body, _ = await fetch(http, wg.base, "nothing.nowhere.localhost",
                                      **{"X-Forwarded-Host": PRIVATE})
        assert status == 404 and body["error"] == "no_route", body
        resp = await exchange(wg, raw_get("/", f"X-Forwarded-Host: {PRIVATE}"))
        status, body = resp.status, resp.body
        assert status == 400, body
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE, **{"X-Forwarded-Host": DEMO}))
        status, body, _ = await fetch(http, wg.base, DEMO, **{"X-Forwarded-Host": PRIVATE})
        assert status == 200, body
        assert wg.state("demo", "hello") == "ready"
        assert wg.state("private", "hello") == "sleeping", "X-Forwarded-Host reached private"

        # Other spellings of the private host.
        for host in spellings:
            assert_unauthorized(*await fetch(http, wg.base, host))

        # A key listed in Connection is still read; a wrong one still refused.
        resp = await exchange(wg, raw_get(
            "/headers", f"Host: {PRIVATE}", "Connection: X-API-Key", f"X-API-Key: {WRONG_KEY}",
        ))
        status, body = resp.status, resp.json()
        assert status == 401 and body["error"] == "unauthorized", body

        # None of that reached the private instance.
        assert wg.state("private", "hello") == "sleeping"
        assert wg.log_of("private", "hello") == ""

        for host in spellings:
            status, body, _ = await fetch(http, wg.base, host, **{"X-API-Key": key})
            assert status == 200, (host, body)
        assert wg.state("private", "hello") == "ready"

        resp = await exchange(wg, raw_get(
            "/headers", f"Host: {PRIVATE}", "Connection: X-API-Key", f"X-API-Key: {key}",
            "X-Trace: kept",
        ))
        status, seen = resp.status, resp.json()
        assert status == 200, seen
        assert "x-api-key" not in header_names(seen), seen
        assert seen.get("X-Trace") == ["kept"], seen


# --- keys made by the CLI -----------------------------------------------------------


async def test_keys_create_and_keys_survive_a_restart(wakegate) -> None:
    wg, first = start(wakegate)
    result = wg.cli("keys", "create", "hello")
    assert result.returncode == 0, result.stderr
    second = result.stdout.strip().splitlines()[-1]
    assert KEY_SHAPE.match(second), result.stdout
    assert second != first

    async with session() as http:
        # It works at once, and the key `up` printed still works.
        for key in (second, first):
            status, body, _ = await fetch(http, wg.base, PRIVATE, **{"X-API-Key": key})
            assert status == 200, body

    public = wg.cli("keys", "create", "hello", "--env", "demo")
    assert public.returncode == 2, public
    assert "public" in public.stderr, public.stderr
    assert not KEY_SHAPE.match((public.stdout.strip().splitlines() or [""])[-1])

    unknown = wg.cli("keys", "create", "nosuchservice")
    assert unknown.returncode == 2, unknown
    assert "nosuchservice" in unknown.stderr, unknown.stderr

    # Only hashes on disk.
    stored = (wg.state_dir / "keys.json").read_text()
    for key in (first, second):
        assert key not in stored
        assert key[3:] not in stored
        assert hashlib.sha256(key.encode()).hexdigest() in stored

    assert wg.stop() == 0
    wg.start()
    assert wg.new_keys() == {}, wg.stdout
    assert not any("wg_" in line for line in wg.stdout), wg.stdout
    async with session() as http:
        for key in (first, second):
            status, body, _ = await fetch(http, wg.base, PRIVATE, **{"X-API-Key": key})
            assert status == 200, body
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE, **{"X-API-Key": WRONG_KEY}))
    for key in (first, second):
        assert key not in wg.stderr()


async def test_keys_stay_out_of_logs_and_metrics_and_failures_are_counted(wakegate) -> None:
    wg, key = start(wakegate)
    made = wg.cli("keys", "create", "hello", check=True).stdout.strip().splitlines()[-1]
    async with session() as http:
        for _ in range(3):
            assert_unauthorized(*await fetch(http, wg.base, PRIVATE))
        for bad in (WRONG_KEY, key[:-1], key + "x"):
            assert_unauthorized(*await fetch(http, wg.base, PRIVATE, **{"X-API-Key": bad}))
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE, Authorization=f"Bearer {made}x"))
        assert_unauthorized(*await fetch(http, wg.base, PRIVATE, f"/?api_key={key}"))
        for path in ("/", f"/?note={key}", "/headers"):
            status, body, _ = await fetch(http, wg.base, PRIVATE, path, **{"X-API-Key": key})
            assert status == 200, body
        status, body, _ = await fetch(http, wg.base, PRIVATE, "/", Authorization=f"Bearer {made}")
        assert status == 200, body
        # A demo request carrying a key is not an auth failure of anything.
        status, body, _ = await fetch(http, wg.base, DEMO, **{"X-API-Key": WRONG_KEY})
        assert status == 200, body

    def failures(reason: str) -> float | None:
        return wg.metric("wakegate_auth_failures_total", environment="private",
                         service="hello", reason=reason)

    assert failures("missing") == 3
    assert failures("invalid") == 4
    assert failures("query_string") == 1
    assert wg.metric("wakegate_auth_failures_total", environment="demo", service="hello") \
        is None
    assert wg.metric("wakegate_requests_total", environment="private", service="hello",
                     code="401") == 8

    secrets = (key, made, WRONG_KEY, key[3:], made[3:])
    texts = {
        "proxy /metrics": wg.metrics_text(),
        "controller /metrics": wg.metrics_text(wg.controller),
        "wakegate stderr": wg.stderr(),
        "wakegate stdout after the welcome": "\n".join(
            line for line in wg.stdout if "wg_" not in line
        ),
    }
    for what, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a key appears in {what}"
    assert "wakegate_auth_failures_total" in texts["proxy /metrics"]
