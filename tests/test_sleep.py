"""Going to sleep when idle, and what does (and does not) keep an instance awake.

Idle timeouts are configured in milliseconds so that the tests let little time
pass, and every wait for a state change has a deadline.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from .client import BURST_GAPS, Answer, bursts_across_sleep, get, paced
from .conftest import Wakegate, hello_service, wait_for, wait_until
from .modes import wakegate_in_every_mode  # noqa: F401  (every deployment)

SERVICE = "hello"
DEMO = "demo"
LABELS = {"environment": DEMO, "service": SERVICE}
STARTING_LINE = "--- wakegate: starting"
SLEEP_DEADLINE = 5.0  # idle timeouts here are < 0.5 s; stopping hello takes ~tens of ms

Start = Callable[..., Wakegate]


def demo_config(idle_timeout: str, activity: dict[str, list[str]] | None = None,
                **environment: Any) -> dict[str, Any]:
    svc = hello_service(environments=[DEMO])
    if activity:
        svc["activity"] = activity
    return {
        "environments": {DEMO: {"idle_timeout": idle_timeout, **environment}},
        "services": {SERVICE: svc},
    }


def starts_in_log(wg: Wakegate) -> int:
    return wg.starts(DEMO, SERVICE)


async def sleeps_while(wg: Wakegate, poke: Callable[[], Awaitable[Any]], what: str) -> None:
    """Call `poke()` every 0.1 s until the instance sleeps (failing after SLEEP_DEADLINE)."""
    stop = asyncio.Event()

    async def poke_forever() -> None:
        while not stop.is_set():
            await poke()
            await asyncio.sleep(0.1)

    poker = asyncio.create_task(poke_forever())
    try:
        await wait_for(lambda: wg.state(DEMO, SERVICE) == "sleeping", SLEEP_DEADLINE, what)
    finally:
        stop.set()
        await poker


async def wake(http: aiohttp.ClientSession, wg: Wakegate) -> Answer:
    answer = await get(http, wg, SERVICE, DEMO)
    assert answer.status == 200 and answer.cold, answer
    return answer


async def stays_ready_for(wg: Wakegate, seconds: float) -> None:
    """Check, for `seconds`, that the instance never leaves ready (and never restarts)."""
    starts = starts_in_log(wg)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = await asyncio.to_thread(lambda: wg.status()[(DEMO, SERVICE)])
        assert (row["state"], row["replicas"]) == ("ready", 1), row
        await asyncio.sleep(0.05)
    assert starts_in_log(wg) == starts
    assert wg.metric("wakegate_scale_events_total", direction="down", **LABELS) is None


# --- idle sleep ---


async def test_idle_instance_sleeps_and_wakes_again(wakegate: Start) -> None:
    wg = wakegate(demo_config("300ms"))
    async with aiohttp.ClientSession() as http:
        first = await wake(http, wg)
        assert wg.service_pids() == [first.body["pid"]]

        wg.wait_state(DEMO, SERVICE, "sleeping", timeout=SLEEP_DEADLINE)
        wait_until(lambda: not wg.service_pids(), 2.0, "the service process to be gone")
        assert wg.status()[(DEMO, SERVICE)]["replicas"] == 0
        assert wg.metric("wakegate_instance_replicas", **LABELS) == 0
        assert wg.metric("wakegate_scale_events_total", direction="down", **LABELS) == 1

        idle = wg.metric("wakegate_instance_idle_seconds", **LABELS)
        assert idle is not None and idle >= 0.3, idle
        wait_until(lambda: (wg.metric("wakegate_instance_idle_seconds", **LABELS) or 0)
                   >= idle + 0.2, 3.0, "wakegate_instance_idle_seconds to grow while asleep")

        again = await wake(http, wg)
        assert again.body["pid"] != first.body["pid"]
    assert wg.state(DEMO, SERVICE) == "ready"
    assert wg.metric("wakegate_instance_replicas", **LABELS) == 1
    assert starts_in_log(wg) == 2


async def test_requests_flowing_keep_it_awake(wakegate: Start) -> None:
    wg = wakegate(demo_config("400ms"))
    async with aiohttp.ClientSession() as http:
        first = await wake(http, wg)
        sent = 0
        # Every 0.1 s for 1.5 s: the traffic's own pace, well under the idle timeout.
        async for answer in paced(lambda: get(http, wg, SERVICE, DEMO)):
            sent += 1
            assert answer.status == 200, answer
            assert not answer.cold, f"request {sent} was a cold start: it fell asleep"
            assert answer.body["pid"] == first.body["pid"]
            assert wg.state(DEMO, SERVICE) == "ready"
    assert sent >= 10
    assert starts_in_log(wg) == 1

    wg.wait_state(DEMO, SERVICE, "sleeping", timeout=SLEEP_DEADLINE)
    assert wg.service_pids() == []


async def test_burst_across_the_moment_of_sleep_gets_no_error(wakegate: Start) -> None:
    """Bursts aimed before, at and after the moment the instance goes to sleep."""
    idle = 0.2  # what BURST_GAPS are aimed at
    wg = wakegate(demo_config(f"{int(idle * 1000)}ms"))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        seen = await bursts_across_sleep(lambda _: get(http, wg, SERVICE, DEMO))
    errors, caught_asleep, gaps = seen.errors, seen.caught_asleep, BURST_GAPS
    assert not errors, f"{len(errors)} failed requests (gap, answer): {errors[:5]}"
    assert caught_asleep >= 2, (
        f"only {caught_asleep} bursts met a sleeping instance: the test missed the moment "
        f"(idle_timeout {idle}s)"
    )
    assert caught_asleep < len(gaps), "every burst met it asleep: none came before the moment"
    assert wg.metric("wakegate_requests_total", code="502", **LABELS) is None
    assert wg.metric("wakegate_requests_total", code="503", **LABELS) is None
    assert wg.metric("wakegate_requests_total", code="504", **LABELS) is None


# --- long-lived requests ---


async def test_open_websocket_keeps_it_awake(wakegate: Start) -> None:
    wg = wakegate(demo_config("300ms"))
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        ws = await http.ws_connect(wg.base + "/ws", headers={"Host": wg.host(SERVICE, DEMO)})
        try:
            await stays_ready_for(wg, 1.5)
            await ws.send_str("still there?")
            msg = await asyncio.wait_for(ws.receive(), 5.0)
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.TEXT, "still there?")
        finally:
            await ws.close()
    wg.wait_state(DEMO, SERVICE, "sleeping", timeout=SLEEP_DEADLINE)
    assert wg.service_pids() == []


async def test_long_stream_keeps_it_awake(wakegate: Start) -> None:
    wg = wakegate(demo_config("300ms"))
    chunks = 15
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        async with http.get(wg.base + f"/stream?chunks={chunks}&interval_ms=100",
                            headers={"Host": wg.host(SERVICE, DEMO)}) as r:
            assert r.status == 200
            lines = []
            while line := await r.content.readline():
                lines.append(line.decode())
                assert wg.state(DEMO, SERVICE) == "ready", f"asleep after {len(lines)} chunks"
    assert lines == [f"chunk {i}\n" for i in range(chunks)]
    assert starts_in_log(wg) == 1
    assert wg.metric("wakegate_scale_events_total", direction="down", **LABELS) is None
    wg.wait_state(DEMO, SERVICE, "sleeping", timeout=SLEEP_DEADLINE)


# --- what does not count as activity ---


async def test_ignored_requests_neither_keep_it_awake_nor_wake_it(wakegate: Start) -> None:
    wg = wakegate(demo_config("400ms", activity={
        "ignore_paths": ["/healthz", "/probe/*"],
        "ignore_user_agents": ["kube-probe"],
    }))
    ignored: list[tuple[str, dict[str, str]]] = [
        ("/healthz", {}),
        ("/probe/live", {}),
        ("/", {"User-Agent": "kube-probe/1.29"}),
    ]
    async with aiohttp.ClientSession() as http:
        await wake(http, wg)
        while_awake: list[Answer] = []
        in_turn = itertools.cycle(ignored)

        async def probe() -> None:
            path, headers = next(in_turn)
            while_awake.append(await get(http, wg, SERVICE, DEMO, path, **headers))

        await sleeps_while(wg, probe, "the instance to sleep despite the ignored requests")
        assert len(while_awake) >= 3
        assert {a.status for a in while_awake} <= {200, 503}, while_awake
        assert any(a.status == 200 for a in while_awake), "they were forwarded while awake"

        for path, headers in ignored:
            answer = await get(http, wg, SERVICE, DEMO, path, **headers)
            assert answer.status == 503, (path, answer)
            assert int(answer.headers["Retry-After"]) > 0
            assert answer.body["error"] == "sleeping", answer
            assert "X-Wakegate-Cold-Start" not in answer.headers
    assert wg.state(DEMO, SERVICE) == "sleeping"
    assert wg.service_pids() == []
    assert starts_in_log(wg) == 1
    assert wg.metric("wakegate_held_requests", **LABELS) in (None, 0)


async def test_admin_endpoints_neither_wake_nor_keep_awake(wakegate: Start) -> None:
    wg = wakegate(demo_config("400ms"))
    admin = [wg.base + "/metrics", wg.base + "/healthz", wg.base + "/readyz",
             wg.controller + "/v1/status"]
    token = {"Authorization": f"Bearer {wg.api_token()}"}

    async with aiohttp.ClientSession() as http:

        async def poke_all() -> None:
            for url in admin:  # aiohttp sends Host: 127.0.0.1:<port>
                async with http.get(url, headers=token if "/v1/" in url else None) as r:
                    assert r.status == 200, (url, r.status)
                    await r.read()

        # Asleep: they do not wake it.
        for _ in range(5):
            await poke_all()
        assert wg.state(DEMO, SERVICE) == "sleeping"
        assert starts_in_log(wg) == 0
        assert wg.service_pids() == []

        # Awake: they do not keep it awake.
        await wake(http, wg)
        await sleeps_while(wg, poke_all, "the instance to sleep despite the admin requests")
        for _ in range(3):  # and more of it while asleep
            await poke_all()
    assert wg.state(DEMO, SERVICE) == "sleeping"
    assert wg.service_pids() == []
    assert starts_in_log(wg) == 1
