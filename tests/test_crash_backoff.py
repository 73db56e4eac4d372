"""Crash back-off: a service whose start keeps failing is not started again and again.

Like Kubernetes' CrashLoopBackOff: after `crash_backoff.after` failed
activations in a row, no process is started for `first` seconds, doubling up to
`max`; meanwhile every request gets 503 `activation_failed` at once with the
time left in Retry-After. A new version or an apply ends it. On Kubernetes the
kubelet restarts a crashing container itself, so these run on `up` and split.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from .client import Answer, fetch
from .conftest import hello_service, wait_until
from .modes import wakegate_in_every_mode  # noqa: F401

BROKEN = "broken.demo.localhost"
FIRST = 3.0  # seconds of the first back-off: longer than a burst of requests takes
pytestmark = pytest.mark.modes("up", "split")


def config() -> dict[str, Any]:
    return {
        "environments": {"demo": {"hold_timeout": "30s", "crash_backoff": {
            "after": 2, "first": f"{FIRST:g}s", "max": f"{2 * FIRST:g}s"}}},
        "services": {
            "broken": hello_service(environments=["demo"], env={"HELLO_EXIT_AT_START": "3"}),
            "hello": hello_service(environments=["demo"]),
        },
    }


def starts(wg: Any) -> int:
    return wg.log_of("demo", "broken").count("--- wakegate: starting")


def row(wg: Any) -> dict[str, Any]:
    return wg.status()[("demo", "broken")]  # type: ignore[no-any-return]


def assert_backed_off(answer: Answer, at_most: float) -> None:
    assert answer.status == 503, answer
    assert answer.body["error"] == "activation_failed", answer
    retry_after = answer.headers.get("Retry-After", "")
    assert retry_after.isdigit() and 1 <= int(retry_after) <= at_most, answer


async def test_failed_starts_back_off_and_no_process_is_started_meanwhile(wakegate: Any) -> None:
    wg = wakegate(config())
    async with aiohttp.ClientSession() as http:
        for n in (1, 2):
            answer = await fetch(http, wg.base, BROKEN)
            assert answer.status == 503 and answer.body["error"] == "activation_failed", answer
            assert starts(wg) == n
        # Two failures in a row: no start for FIRST seconds, whatever comes in.
        burst = await asyncio.gather(*(fetch(http, wg.base, BROKEN, f"/{i}")
                                       for i in range(100)))
        for answer in burst:
            assert_backed_off(answer, FIRST)
        assert starts(wg) == 2, "a process was started during the back-off"

        state = row(wg)
        assert state["failures_in_a_row"] == 2 and 0 < state["backoff_seconds"] <= FIRST, state
        shown = wg.cli("status", check=True).stdout
        assert "crash back-off: 2 failed starts" in shown, shown
        assert (wg.metric("wakegate_instance_backoff_seconds", environment="demo",
                          service="broken") or 0) > 0
        healthy = await fetch(http, wg.base, "hello.demo.localhost")
        assert healthy.status == 200, "another instance must not be held back"

        # Once it is over, the next request tries again; failing, the back-off doubles.
        wait_until(lambda: row(wg)["backoff_seconds"] == 0, FIRST + 5, "the back-off to end")
        again = await fetch(http, wg.base, BROKEN)
        assert again.status == 503 and starts(wg) == 3, again
        after = row(wg)
        assert after["failures_in_a_row"] == 3 and after["backoff_seconds"] > FIRST, after
        assert_backed_off(await fetch(http, wg.base, BROKEN), 2 * FIRST)
        assert starts(wg) == 3

        # A new version ends it: started at once.
        wg.cli("deploy", "broken", "2.0.0", "--env", "demo", check=True)
        assert row(wg)["backoff_seconds"] == 0 and row(wg)["failures_in_a_row"] == 0
        answer = await fetch(http, wg.base, BROKEN)
        assert answer.status == 503 and starts(wg) == 4, answer


async def test_apply_ends_the_back_off(wakegate: Any) -> None:
    wg = wakegate(config())
    async with aiohttp.ClientSession() as http:
        for _ in range(2):
            await fetch(http, wg.base, BROKEN)
        assert row(wg)["backoff_seconds"] > 0
        started = time.monotonic()
        applied = wg.cli("apply", check=True)
        assert "applied" in applied.stdout, applied
        assert row(wg)["backoff_seconds"] == 0, "apply must let it try again at once"
        answer = await fetch(http, wg.base, BROKEN)
        assert answer.status == 503 and starts(wg) == 3, answer
        assert time.monotonic() - started < FIRST
    status = json.loads(wg.cli("status", "--json", check=True).stdout)
    broken = next(r for r in status if r["service"] == "broken")
    assert broken["failures_in_a_row"] == 1 and broken["backoff_seconds"] == 0, broken


async def test_a_replica_that_dies_right_after_it_is_ready_is_a_failed_start(
    wakegate: Any,
) -> None:
    """GET /crash makes the example exit at once: ready, then gone, twice (the request is
    sent once more to a new replica, never a third time) is two failed starts in a row."""
    wg = wakegate({
        "environments": {"demo": {"crash_backoff": {"after": 2, "first": f"{FIRST:g}s"}}},
        "services": {"hello": hello_service(environments=["demo"])},
    })
    host = "hello.demo.localhost"
    async with aiohttp.ClientSession() as http:
        crashed = await fetch(http, wg.base, host, "/crash")
        assert crashed.status == 502, crashed
        assert wg.log_of("demo", "hello").count("--- wakegate: starting") == 2
        # The controller sees the second exit a moment after the proxy saw the reset.
        state = wait_until(lambda: (s := wg.status()[("demo", "hello")])["failures_in_a_row"]
                           == 2 and s, 5.0, "the second early exit to count")
        assert state["backoff_seconds"] > 0, state
        assert_backed_off(await fetch(http, wg.base, host), FIRST)
        assert wg.log_of("demo", "hello").count("--- wakegate: starting") == 2


async def test_an_always_on_instance_in_back_off_starts_at_once_after_apply(
    wakegate: Any,
) -> None:
    broken = hello_service(environments=["staging"], env={"HELLO_EXIT_AT_START": "3"})
    wg = wakegate({
        "environments": {"staging": {"crash_backoff": {"after": 1, "first": "1m",
                                                       "max": "2m"}}},
        "services": {"hello": broken},
    })
    state = wg.status()[("staging", "hello")]
    assert state["backoff_seconds"] > 50, state  # its first start failed: 1 min of back-off
    # The operator fixes it: apply starts it now, not when the minute is over.
    wg.config["services"]["hello"] = hello_service(environments=["staging"])
    wg.write_config()
    wg.cli("apply", check=True)
    wait_until(lambda: wg.status()[("staging", "hello")]["state"] == "ready", 15.0,
               "the fixed always-on instance to start")
    async with aiohttp.ClientSession() as http:
        answer = await fetch(http, wg.base, "hello.staging.localhost")
        assert answer.status == 200, answer
