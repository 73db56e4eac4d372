"""The operator's view: one log line per request and per state change; the waking page.

wakegate runs as a real process with `--log-format json|text`; every line it
writes to stderr is read back and parsed as a person's tooling would.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .client import fetch
from .conftest import REPO, Wakegate, hello_service, stop_all, wait_until

BROWSER = {"Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
           "Sec-Fetch-Mode": "navigate"}


class WakegateWith(Wakegate):
    """`wakegate up` with extra command-line options."""

    def __init__(self, tmp: Path, config: dict[str, Any], args: list[str]) -> None:
        super().__init__(tmp, config)
        self.extra = args

    def argv(self) -> list[str]:
        return [*super().argv(), *self.extra]

    def lines(self) -> list[str]:
        return [line for line in self.stderr().splitlines() if line.strip()]

    def json_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.lines():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON line: {line!r}") from None
        return out


@pytest.fixture
def up_with(tmp_path: Path) -> Iterator[Callable[..., WakegateWith]]:
    started: list[WakegateWith] = []

    def start(config: dict[str, Any], *args: str) -> WakegateWith:
        wg = WakegateWith(tmp_path / f"wg{len(started)}", config, list(args))
        started.append(wg)
        return wg.start()  # type: ignore[return-value]

    yield start
    stop_all(started)


def config(**demo: Any) -> dict[str, Any]:
    return {"environments": {"private": {"idle_timeout": "1h"},
                             "demo": {"idle_timeout": "600ms", **demo}},
            "services": {"hello": hello_service()}}


async def test_json_request_and_state_lines(up_with: Callable[..., WakegateWith]) -> None:
    wg = up_with(config(), "--log-format", "json")
    key = wg.new_keys()["private/hello"]
    async with aiohttp.ClientSession() as http:
        cold = await fetch(http, wg.base, wg.host("hello", "demo"), "/items?token=SECRET1")
        assert cold.status == 200 and cold.cold, cold
        private = await fetch(http, wg.base, wg.host("hello", "private"), "/me?q=SECRET2",
                              **{"X-API-Key": key})
        assert private.status == 200, private
        refused = await fetch(http, wg.base, wg.host("hello", "private"), "/",
                              **{"X-API-Key": "wg_wrong"})
        assert refused.status == 401
        # A decoded line break in the path must not forge a line of its own.
        forged = await fetch(http, wg.base, wg.host("hello", "demo"),
                             "/a%0a2026-01-01%20FORGED")
        assert forged.status in (200, 404), forged
    wg.wait_state("demo", "hello", "sleeping", timeout=10.0)

    def requests() -> list[dict[str, Any]]:
        return [r for r in wg.json_lines() if r["logger"] == "wakegate.requests"]

    wait_until(lambda: len(requests()) >= 4, 5.0, "four request lines")
    lines = wg.json_lines()  # every line of the process is JSON
    demo, mine, bad = requests()[:3]
    assert demo["environment"] == "demo" and demo["service"] == "hello", demo
    assert demo["status"] == 200 and demo["cold_start"] is True, demo
    assert demo["path"] == "/items" and demo["method"] == "GET", demo
    assert demo["client"] == "127.0.0.1" and demo["duration_ms"] > 0, demo
    assert {"time", "level", "message"} <= demo.keys()
    assert mine["environment"] == "private" and mine["status"] == 200, mine
    assert mine["path"] == "/me", mine
    assert bad["status"] == 401, bad
    text = wg.stderr()
    assert not any(line.startswith("2026-01-01") for line in text.splitlines()), text
    assert any(r.get("path") == "/a\\n2026-01-01 FORGED" for r in requests()), requests()
    for secret in ("SECRET1", "SECRET2", key, "wg_wrong"):
        assert secret not in text, f"{secret} was logged"
    events = [(r["event"], r["environment"]) for r in lines if "event" in r]
    assert events.count(("woke", "demo")) == 1, events
    assert events.count(("slept", "demo")) == 1, events
    woke = next(r for r in lines if r.get("event") == "woke" and r["environment"] == "demo")
    assert woke["service"] == "hello" and woke["duration_ms"] > 0, woke


async def test_text_lines_and_request_log_off(up_with: Callable[..., WakegateWith]) -> None:
    wg = up_with(config(idle_timeout="1h"))
    off = up_with(config(idle_timeout="1h"), "--request-log", "off")
    async with aiohttp.ClientSession() as http:
        for w in (wg, off):
            for _ in range(2):
                assert (await fetch(http, w.base, w.host("hello", "demo"))).status == 200
    wait_until(lambda: sum("wakegate.requests" in line for line in wg.lines()) == 2, 5.0,
               "two request lines")
    line = next(line for line in wg.lines() if "wakegate.requests" in line)
    assert " INFO wakegate.requests: GET / demo/hello 200 " in line, line
    assert "client=127.0.0.1" in line, line
    assert any("woke demo/hello" in line for line in off.lines()), off.lines()
    assert not any("wakegate.requests" in line for line in off.lines()), off.lines()


async def test_a_browser_gets_the_waking_page_and_api_clients_are_held(
        up_with: Callable[..., WakegateWith]) -> None:
    svc = hello_service(env={"HELLO_STARTUP_DELAY_MS": "700"}, version="3.1.4",
                        environments=["demo"])
    wg = up_with({"environments": {"demo": {"idle_timeout": "1h", "wake_strategy": "page"}},
                  "services": {"hello": svc}})
    host = wg.host("hello", "demo")
    async with aiohttp.ClientSession() as http:
        page = await fetch(http, wg.base, host, "/", **BROWSER)
        assert page.status == 503, page
        assert page.headers["Content-Type"].startswith("text/html"), page
        assert page.headers["Retry-After"] == "2" and page.headers["Cache-Control"] == "no-store"
        assert '<meta http-equiv="refresh" content="2">' in page.body
        assert "hello is waking up" in page.body
        for internal in ("3.1.4", "127.0.0.1", "demo", "error", "Traceback"):
            assert internal not in page.body, internal
        # An API client (and a script's fetch) is held as usual, on the same wake.
        api, fetched = await asyncio.gather(
            fetch(http, wg.base, host, "/", Accept="application/json"),
            fetch(http, wg.base, host, "/", **{**BROWSER, "Sec-Fetch-Mode": "cors"}))
        assert api.status == 200 and api.cold, api
        assert fetched.status == 200, fetched
        assert wg.starts("demo", "hello") == 1, "the page's wake and the held one are one"
        # The reload after the instance is ready shows the service.
        again = await fetch(http, wg.base, host, "/", **BROWSER)
        assert again.status == 200 and again.body["version"] == "3.1.4", again


async def test_the_page_alone_wakes_the_instance(up_with: Callable[..., WakegateWith]) -> None:
    wg = up_with({"environments": {"demo": {"idle_timeout": "1h", "wake_strategy": "page"}},
                  "services": {"hello": hello_service(environments=["demo"])}})
    async with aiohttp.ClientSession() as http:
        page = await fetch(http, wg.base, wg.host("hello", "demo"), "/", **BROWSER)
    assert page.status == 503
    wg.wait_state("demo", "hello", "ready", timeout=10.0)


def test_wake_strategy_is_validated(tmp_path: Path) -> None:
    path = tmp_path / "wakegate.yaml"
    path.write_text(yaml.safe_dump({"environments": {"demo": {"wake_strategy": "splash"}},
                                    "services": {"hello": hello_service(environments=["demo"])}}))
    result = subprocess.run([sys.executable, "-m", "controller.cli", "validate", "-c",
                             str(path)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result
    assert f"{path}: environments.demo.wake_strategy:" in result.stderr, result.stderr
    assert "hold" in result.stderr and "page" in result.stderr, result.stderr
