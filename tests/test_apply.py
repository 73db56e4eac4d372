"""`wakegate apply` and SIGHUP: the system follows an edited config, or keeps the old one."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

import aiohttp

from .client import fetch
from .conftest import Wakegate, hello_service, wait_until

Start = Callable[..., Wakegate]


def config(services: dict[str, dict[str, Any]], idle: str = "1h") -> dict[str, Any]:
    return {"environments": {"demo": {"idle_timeout": idle, "hold_timeout": "20s"}},
            "services": services}


def demo_service(**overrides: Any) -> dict[str, Any]:
    return hello_service(environments=["demo"], **overrides)


async def test_apply_adds_and_removes_instances_while_others_serve(wakegate: Start) -> None:
    wg = wakegate(config({"hello": demo_service(), "gone": demo_service()}))
    host = wg.host("hello", "demo")
    statuses: list[int] = []
    stop = asyncio.Event()

    async def load(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            statuses.append((await fetch(http, wg.base, host)).status)

    async with aiohttp.ClientSession() as http:
        assert (await fetch(http, wg.base, wg.host("gone", "demo"))).status == 200
        clients = [asyncio.ensure_future(load(http)) for _ in range(3)]
        wg.config["services"] = {"hello": demo_service(), "added": demo_service()}
        wg.write_config()
        out = (await asyncio.to_thread(wg.cli, "apply", "-c", str(wg.config_path))).stdout
        assert "added: demo/added" in out and "removed: demo/gone" in out, out
        await asyncio.to_thread(wait_until, lambda: len(statuses) > 50, 10.0, "traffic")
        stop.set()
        await asyncio.gather(*clients)
        assert set(statuses) == {200}, "the other instance never failed"
        gone = await fetch(http, wg.base, wg.host("gone", "demo"))
        assert gone.status == 404, gone
        added = wg.status()[("demo", "added")]
        assert added["state"] == "sleeping", "a new instance appears asleep"
        assert (await fetch(http, wg.base, wg.host("added", "demo"))).status == 200
    assert ("demo", "gone") not in wg.status()
    assert len(wg.service_pids()) == 2, "the removed instance's process was stopped"


async def test_held_requests_of_a_removed_instance_get_a_clear_error(wakegate: Start) -> None:
    slow = demo_service(env={"HELLO_STARTUP_DELAY_MS": "5000"})
    wg = wakegate(config({"hello": demo_service(), "slow": slow}))
    async with aiohttp.ClientSession() as http:
        held = asyncio.ensure_future(fetch(http, wg.base, wg.host("slow", "demo")))
        await asyncio.to_thread(wg.wait_state, "demo", "slow", "starting", 5.0)
        wg.config["services"] = {"hello": demo_service()}
        wg.write_config()
        await asyncio.to_thread(wg.cli, "apply", "-c", str(wg.config_path), check=True)
        answer = await asyncio.wait_for(held, 5.0)
    assert answer.status == 404, answer
    assert answer.body["error"] == "no_route", answer


async def test_an_invalid_config_is_refused_and_changes_nothing(wakegate: Start) -> None:
    wg = wakegate(config({"hello": demo_service()}))
    wg.config["services"] = {"hello": demo_service(), "Bad_Name": demo_service()}
    wg.config["environments"]["demo"]["idle_timeout"] = "soon"
    wg.write_config()
    result = wg.cli("apply", "-c", str(wg.config_path))
    assert result.returncode == 2, result
    assert f"{wg.config_path}: services.Bad_Name:" in result.stderr, result.stderr
    assert f"{wg.config_path}: environments.demo.idle_timeout:" in result.stderr
    assert set(wg.status()) == {("demo", "hello")}
    # The same through SIGHUP: refused, logged, the old config keeps running.
    assert wg.proc is not None
    wg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config not applied" in wg.stderr(), 5.0, "the refusal to be logged")
    assert set(wg.status()) == {("demo", "hello")}
    assert wg.status()[("demo", "hello")]["idle_timeout"] == 3600


async def test_sighup_applies_a_changed_policy_at_once(wakegate: Start) -> None:
    wg = wakegate(config({"hello": demo_service()}))
    async with aiohttp.ClientSession() as http:
        assert (await fetch(http, wg.base, wg.host("hello", "demo"))).status == 200
    wg.config["environments"]["demo"]["idle_timeout"] = "300ms"
    wg.write_config()
    assert wg.proc is not None
    wg.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: wg.status()[("demo", "hello")]["idle_timeout"] == 0.3, 5.0,
               "the new idle timeout")
    wg.wait_state("demo", "hello", "sleeping", timeout=5.0)


async def test_a_change_that_needs_a_restart_is_refused(wakegate: Start) -> None:
    wg = wakegate(config({"hello": demo_service()}))
    wg.config["domain"] = "example.test"
    wg.write_config()
    result = wg.cli("apply", "-c", str(wg.config_path))
    assert result.returncode == 2
    assert "domain changed" in result.stderr and "restart" in result.stderr, result.stderr
    assert wg.status()[("demo", "hello")]["url"].startswith("http://hello.demo.localhost")
