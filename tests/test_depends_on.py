"""Services that wake together (`depends_on`): woken in parallel with the service a request
wakes, kept awake while it is awake, asleep after it."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .client import get, get_once, paced
from .conftest import wait_for
from .modes import wakegate_in_every_mode  # noqa: F401  (the fixture: every mode)

Start = Callable[..., Any]
ENVIRONMENT_UPSTREAM = Path(__file__).resolve().parent / "upstreams" / "environment.py"
START_DELAY = 0.8  # seconds each service of the chain takes to start
CHAIN = ("api", "db", "cache")  # api -> db -> cache


def service(start_delay: float = 0.0, **settings: Any) -> dict[str, Any]:
    """A service of the demo environment that takes `start_delay` seconds to start."""
    return {
        "command": f"{sys.executable} {ENVIRONMENT_UPSTREAM} --port {{port}}",
        "environments": ["demo"],
        "env": {"START_DELAY_MS": str(round(start_delay * 1000))},
        "stop_grace": "2s",
        **settings,
    }


def chain_config(idle: str, start_delay: float = 0.0) -> dict[str, Any]:
    return {
        "environments": {"demo": {"idle_timeout": idle, "hold_timeout": "20s"}},
        "services": {
            "api": service(start_delay, depends_on=["db"]),
            "db": service(start_delay, depends_on=["cache"]),
            "cache": service(start_delay),
        },
    }


def states(wg: Any) -> dict[str, str]:
    return {svc: row["state"] for (env, svc), row in wg.status().items() if env == "demo"}


async def test_a_cold_request_wakes_the_chain_in_parallel(wakegate: Start) -> None:
    wg = wakegate(chain_config("1h", START_DELAY))
    assert states(wg) == dict.fromkeys(CHAIN, "sleeping")
    started = time.monotonic()
    answer = await get_once(wg, "api", "demo")
    assert answer.status == 200, answer
    assert answer.cold, "the request woke api"
    # Forwarded once api itself is ready, about one start after it was sent.
    assert START_DELAY <= answer.seconds < 2 * START_DELAY, answer.seconds
    await wait_for(lambda: set(states(wg).values()) == {"ready"}, 10.0, "the chain to be ready")
    all_ready = time.monotonic() - started
    serial = len(CHAIN) * START_DELAY
    # Started one after another it would take the sum of the three starts; in parallel, about
    # the slowest one. Less than two starts in a row leaves a clear margin both ways.
    assert all_ready < serial - START_DELAY, f"all ready after {all_ready:.2f}s"
    assert [wg.starts("demo", svc) for svc in CHAIN] == [1, 1, 1]


async def test_a_request_to_a_dependency_wakes_only_it_and_what_it_needs(
    wakegate: Start,
) -> None:
    wg = wakegate(chain_config("1h"))
    assert (await get_once(wg, "db", "demo")).status == 200
    await wait_for(lambda: states(wg)["cache"] == "ready", 10.0, "cache, db's dependency")
    assert states(wg) == {"api": "sleeping", "db": "ready", "cache": "ready"}
    assert wg.starts("demo", "api") == 0, "a dependency never wakes what depends on it"


async def test_a_dependency_stays_awake_while_its_dependent_is_busy(wakegate: Start) -> None:
    idle = 0.5
    wg = wakegate(chain_config(f"{idle}s"))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        assert (await get(http, wg, "api", "demo")).status == 200
        await wait_for(lambda: set(states(wg).values()) == {"ready"}, 10.0, "the chain")
        # Traffic to api alone, for three idle timeouts: db and cache get none.
        seen: list[dict[str, str]] = []
        async for answer in paced(lambda: get(http, wg, "api", "demo"), 3 * idle, 0.1):
            assert answer.status == 200, answer
            seen.append(await asyncio.to_thread(states, wg))
    assert len(seen) >= 10, seen
    assert all(s == dict.fromkeys(CHAIN, "ready") for s in seen), seen
    assert [wg.starts("demo", svc) for svc in CHAIN] == [1, 1, 1], "none slept in between"
    # The traffic stopped: all three sleep, the dependencies not before what needs them.
    await wait_for(lambda: set(states(wg).values()) == {"sleeping"}, 10.0, "all asleep")
    log = wg.stderr()
    asleep = [log.find(f"demo/{svc} is asleep") for svc in CHAIN]
    assert -1 not in asleep and asleep == sorted(asleep), log[-3000:]
    await wait_for(lambda: not wg.service_pids(), 5.0, "every process stopped")


@pytest.mark.modes("up", "split")  # the fake kubelet tells a pod no WAKEGATE_ENVIRONMENT
async def test_the_prerelease_host_wakes_production_and_its_dependencies(
    wakegate: Start,
) -> None:
    # A production that sleeps, so that a request to its second host has something to wake.
    wg = wakegate({
        "environments": {"production": {"min_replicas": 0, "idle_timeout": "1h"}},
        "services": {"api": service(depends_on=["db"], environments=["production"]),
                     "db": service(environments=["production"])},
    })
    answer = await get_once(wg, "api", "prerelease")
    assert (answer.status, answer.cold) == (200, True), answer
    assert answer.body["WAKEGATE_ENVIRONMENT"] == "production", answer.body
    await wait_for(lambda: wg.state("production", "db") == "ready", 10.0, "production/db")


async def test_an_ephemeral_copy_wakes_its_chain_together(wakegate: Start) -> None:
    wg = wakegate(chain_config("1h", START_DELAY))
    created = await asyncio.to_thread(wg.cli, "env", "create", "pr-3", "--from", "demo")
    assert created.returncode == 0, created.stderr

    def copy_states() -> dict[str, str]:
        return {svc: row["state"] for (env, svc), row in wg.status().items() if env == "pr-3"}

    assert copy_states() == dict.fromkeys(CHAIN, "sleeping")
    started = time.monotonic()
    answer = await get_once(wg, "api", "pr-3")
    assert (answer.status, answer.cold) == (200, True), answer
    await wait_for(lambda: set(copy_states().values()) == {"ready"}, 10.0, "pr-3's chain")
    assert time.monotonic() - started < len(CHAIN) * START_DELAY - START_DELAY
    assert states(wg) == dict.fromkeys(CHAIN, "sleeping"), "the source was not woken"
