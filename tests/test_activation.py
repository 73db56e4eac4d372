"""Waking a sleeping instance: cold start, held requests, failures, readiness, replicas.

Every test drives a real `wakegate up` over loopback HTTP and checks what a
user would: status codes, the cold-start headers, `wakegate status`, the
proxy's /metrics and the service processes themselves.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from .client import get
from .conftest import Wakegate, hello_service, wait_for, wait_until
from .modes import wakegate_in_every_mode  # noqa: F401  (every deployment)
from .procs import environment

SERVICE = "hello"
DEMO = "demo"
LABELS = {"environment": DEMO, "service": SERVICE}
STARTING_LINE = "--- wakegate: starting"
SERVER_TIMING = re.compile(r"coldstart;dur=(\d+(?:\.\d+)?)")

Start = Callable[..., Wakegate]


def demo_config(env: dict[str, str] | None = None, *, version: str = "1.0.0",
                **environment: Any) -> dict[str, Any]:
    """One hello service in one demo environment (settings given as keyword arguments)."""
    return {
        "environments": {DEMO: dict(environment)},
        "services": {
            SERVICE: hello_service(environments=[DEMO], version=version, env=dict(env or {})),
        },
    }


def starts_in_log(wg: Wakegate, environment: str = DEMO) -> int:
    return wg.starts(environment, SERVICE)


def cold_start_ms(headers: Any) -> float:
    match = SERVER_TIMING.fullmatch(headers.get("Server-Timing", ""))
    assert match, f"no coldstart Server-Timing: {headers.get('Server-Timing')!r}"
    return float(match.group(1))


# --- the cold start itself ---


async def test_cold_start_then_warm(wakegate: Start) -> None:
    wg = wakegate(demo_config())
    row = wg.status()[(DEMO, SERVICE)]
    assert (row["state"], row["replicas"]) == ("sleeping", 0)
    assert wg.service_pids() == []

    async with aiohttp.ClientSession() as http:
        first = await get(http, wg, SERVICE, DEMO)
        assert first.status == 200, first
        assert first.cold, first
        assert cold_start_ms(first.headers) > 0
        assert first.body["service"] == SERVICE

        second = await get(http, wg, SERVICE, DEMO)
        assert second.status == 200, second
        assert "X-Wakegate-Cold-Start" not in second.headers
        assert "coldstart" not in second.headers.get("Server-Timing", "")
        assert second.body["pid"] == first.body["pid"]

    row = wg.status()[(DEMO, SERVICE)]
    assert (row["state"], row["replicas"]) == ("ready", 1)
    assert wg.service_pids() == [first.body["pid"]]
    assert wg.metric("wakegate_cold_starts_total", result="success", **LABELS) == 1
    assert wg.metric("wakegate_cold_starts_total", result="failure", **LABELS) is None
    assert wg.metric("wakegate_cold_start_duration_seconds_count", **LABELS) == 1
    assert wg.metric("wakegate_requests_total", code="200", **LABELS) == 2


async def test_many_held_requests_share_one_cold_start(wakegate: Start) -> None:
    wg = wakegate(demo_config({"HELLO_STARTUP_DELAY_MS": "300"}))
    count = 200
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        answers = await asyncio.gather(*(get(http, wg, SERVICE, DEMO) for _ in range(count)))

    statuses = sorted({a.status for a in answers})
    assert statuses == [200], [a for a in answers if a.status != 200][:3]
    assert all(a.cold for a in answers), "every request was held through the cold start"
    pids = {a.body["pid"] for a in answers}
    assert len(pids) == 1, pids
    assert wg.service_pids() == list(pids)
    assert starts_in_log(wg) == 1, wg.log_of(DEMO, SERVICE)
    assert wg.metric("wakegate_cold_starts_total", result="success", **LABELS) == 1
    assert wg.metric("wakegate_requests_total", code="200", **LABELS) == count


async def test_held_requests_gauge(wakegate: Start) -> None:
    wg = wakegate(demo_config({"HELLO_STARTUP_DELAY_MS": "1500"}))
    held = 5
    async with aiohttp.ClientSession() as http:
        tasks = [asyncio.create_task(get(http, wg, SERVICE, DEMO)) for _ in range(held)]
        await wait_for(lambda: wg.metric("wakegate_held_requests", **LABELS) == held, 5.0,
                       f"wakegate_held_requests to show {held} held requests")
        assert not any(t.done() for t in tasks), "the requests were answered before the start"
        assert wg.state(DEMO, SERVICE) == "starting"
        answers = await asyncio.gather(*tasks)
    assert [a.status for a in answers] == [200] * held
    assert all(a.cold for a in answers)
    assert wg.metric("wakegate_held_requests", **LABELS) == 0


async def test_held_client_that_disconnects_is_removed_at_once(wakegate: Start) -> None:
    delay = 3.0
    wg = wakegate(demo_config({"HELLO_STARTUP_DELAY_MS": str(int(delay * 1000))}))
    http = aiohttp.ClientSession()
    try:
        task = asyncio.create_task(get(http, wg, SERVICE, DEMO))
        await wait_for(lambda: wg.metric("wakegate_held_requests", **LABELS) == 1, 5.0,
                       "the request to be held")
        held_at = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await http.close()  # the client's connection is gone

    await wait_for(lambda: wg.metric("wakegate_held_requests", **LABELS) == 0, 1.0,
                   "the disconnected client to be removed from the hold")
    await wait_for(lambda: wg.metric("wakegate_requests_total", code="499", **LABELS) == 1, 1.0,
                   'wakegate_requests_total{code="499"} to count the disconnect')
    assert time.monotonic() - held_at < delay / 2, "removed long before the start finished"
    assert wg.state(DEMO, SERVICE) == "starting", "the start itself goes on"


# --- failures ---


# On Kubernetes the kubelet restarts a crashing container: the activation fails
# only at start_timeout (tests/test_kubernetes.py).
@pytest.mark.modes("up", "split")
async def test_service_that_exits_at_start_fails_held_requests_at_once(wakegate: Start) -> None:
    wg = wakegate(demo_config({"HELLO_EXIT_AT_START": "7"}, hold_timeout="30s"))
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(get(http, wg, SERVICE, DEMO) for _ in range(5)))
        for a in answers:
            assert a.status == 503, a
            assert a.body["error"] == "activation_failed", a
            assert (a.body["environment"], a.body["service"]) == (DEMO, SERVICE)
            assert int(a.headers["Retry-After"]) > 0
            assert a.seconds < 3.0, f"failed after {a.seconds:.2f}s, not at once"
        starts = starts_in_log(wg)
        assert starts >= 1
        assert "HELLO_EXIT_AT_START=7" in wg.log_of(DEMO, SERVICE)

        again = await get(http, wg, SERVICE, DEMO)
        assert again.status == 503, again
        assert again.body["error"] == "activation_failed"
        assert again.seconds < 3.0
        assert starts_in_log(wg) == starts + 1, "the next request tries again"

    assert wg.service_pids() == []
    assert wg.metric("wakegate_cold_starts_total", result="failure", **LABELS) == starts + 1
    assert wg.metric("wakegate_cold_starts_total", result="success", **LABELS) is None
    row = wg.status()[(DEMO, SERVICE)]
    assert row["replicas"] == 0
    assert "status 7" in (row["error"] or ""), row
    shown = wg.cli("status", check=True).stdout
    line = next(ln for ln in shown.splitlines() if ln.startswith(DEMO))
    assert "failed" in line, shown
    assert f"{DEMO}/{SERVICE}: last start failed:" in shown and "status 7" in shown, shown
    as_json = wg.cli("status", "--json", check=True).stdout
    assert "exited with status 7" in as_json, as_json


@pytest.mark.modes("up", "split")  # on Kubernetes the Deployment restarts a crashed pod itself
async def test_service_that_crashes_while_serving_sleeps_then_wakes_again(
    wakegate: Start,
) -> None:
    wg = wakegate(demo_config())
    async with aiohttp.ClientSession() as http:
        first = await get(http, wg, SERVICE, DEMO)
        assert first.status == 200 and first.cold, first
        try:
            crashed = await asyncio.wait_for(get(http, wg, SERVICE, DEMO, "/crash"), 5.0)
        except TimeoutError:
            pytest.fail(f"GET /crash not answered within 5 s; meanwhile the service was "
                        f"started {starts_in_log(wg)} times (the request is being replayed)")
        assert crashed.status == 502, crashed
        assert crashed.body["error"].startswith("upstream"), crashed

        wg.wait_state(DEMO, SERVICE, "sleeping", timeout=5.0)
        assert wg.service_pids() == []
        # A GET whose replica died under it is sent once more, to a woken replica (as
        # nginx's proxy_next_upstream would: it may have died for another reason, its
        # controller with it), and never a second time.
        assert starts_in_log(wg) == 2, ("the crashing request was replayed more than once",
                                        crashed)

        woken = await get(http, wg, SERVICE, DEMO)
        assert woken.status == 200, woken
        assert woken.cold, woken
        assert woken.body["pid"] != first.body["pid"]
    assert wg.service_pids() == [woken.body["pid"]]
    assert starts_in_log(wg) == 3


# --- readiness and what the process is given ---


async def test_readiness_is_noticed_within_milliseconds(wakegate: Start) -> None:
    """From /healthz turning 200 to the held request being answered: milliseconds.

    The Server-Timing duration also counts the process start (imports, ~0.3 s),
    so the readiness delay is measured from the moment the service printed that
    it had bound its socket. Two services, so that a slow poll cannot pass by luck.
    """
    ready_after = 0.4
    services = ("hello", "hello2")
    env = {"HELLO_READY_AFTER_MS": str(int(ready_after * 1000))}
    wg = wakegate({
        "environments": {DEMO: {}},
        "services": {name: hello_service(environments=[DEMO], env=env) for name in services},
    })
    async with aiohttp.ClientSession() as http:
        for name in services:
            started = time.monotonic()
            task = asyncio.create_task(
                http.get(wg.base + "/", headers={"Host": wg.host(name, DEMO)})
            )

            def bound(name: str = name) -> float | None:
                listening = "listening on" in wg.log_of(DEMO, name)
                return time.monotonic() if listening else None

            bound_at = await asyncio.to_thread(wait_until, bound, 10.0,
                                               f"{name} to bind its socket", 0.002)
            async with await task as r:
                answered_at = time.monotonic()
                assert r.status == 200, await r.text()
                assert r.headers.get("X-Wakegate-Cold-Start") == "true"
                duration_ms = cold_start_ms(r.headers)
            # Held until /healthz said ready, which is ready_after past the bind...
            assert duration_ms >= ready_after * 1000, duration_ms
            assert duration_ms <= (answered_at - started) * 1000 + 50, duration_ms
            # ...and forwarded soon after: readiness is polled in milliseconds, not seconds.
            noticed = answered_at - bound_at - ready_after
            assert noticed < 0.2, (
                f"{name}: ready noticed {noticed * 1000:.0f} ms after /healthz said ok"
            )


@pytest.mark.modes("up", "split")  # ports and process environment are the local runtime's
async def test_service_gets_its_version_and_a_free_port(wakegate: Start) -> None:
    wg = wakegate(demo_config(version="2.5.1-rc.1"))
    async with aiohttp.ClientSession() as http:
        answer = await get(http, wg, SERVICE, DEMO)
        assert answer.status == 200, answer
        assert answer.body["version"] == "2.5.1-rc.1"
        pid = answer.body["pid"]

        environ = environment(pid)
        assert environ["WAKEGATE_VERSION"] == "2.5.1-rc.1"
        port = int(environ["PORT"])
        assert port not in (wg.proxy_port, wg.controller_port)
        log = wg.log_of(DEMO, SERVICE)
        assert f"on port {port} " in log, log
        assert f"hello 2.5.1-rc.1 listening on 127.0.0.1:{port}" in log, log

        # The process really listens on the port it was given.
        async with http.get(f"http://127.0.0.1:{port}/") as r:
            assert r.status == 200
            assert (await r.json())["pid"] == pid


# --- always-on replicas ---


async def test_production_replicas_start_at_up_and_share_the_load(wakegate: Start) -> None:
    wg = wakegate({
        "environments": {"production": {"min_replicas": 2}},
        "services": {SERVICE: hello_service(environments=["production"])},
    })

    def two_ready() -> bool:
        row = wg.status()[("production", SERVICE)]
        return row["state"] == "ready" and row["replicas"] == 2

    await wait_for(two_ready, 15.0, "production to have 2 ready replicas without a request")
    assert len(wg.service_pids()) == 2
    assert starts_in_log(wg, "production") == 2

    async with aiohttp.ClientSession() as http:
        answers = [await get(http, wg, SERVICE, "production") for _ in range(20)]
    assert [a.status for a in answers] == [200] * 20
    assert not any("X-Wakegate-Cold-Start" in a.headers for a in answers)
    pids = {a.body["pid"] for a in answers}
    assert pids == set(wg.service_pids()), (pids, wg.service_pids())
    prod = {"environment": "production", "service": SERVICE}
    assert wg.metric("wakegate_cold_starts_total", result="success", **prod) is None
