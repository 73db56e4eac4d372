"""Scaling by load on the local runtime: real `wakegate up`, real HTTP load, short windows.

The load is the example service's `/slow?ms=N` from a number of clients, each
sending its next request as soon as the last one is answered, so the
concurrency the proxy sees is about the number of clients. With
`target_concurrency` 1 (or 2) and `target_utilization` 1 the replicas wanted
are easy to tell: ceil(clients / target). Every wait polls /v1/status (or
the log) with a deadline. The Kubernetes runtime's side is in
test_kube_autoscale.py; scaling down runs in split mode too, where the proxies
that must stop sending to the replica that goes are in other processes.
"""

from __future__ import annotations

import asyncio
import re
import time

import aiohttp
import pytest

from .autoscale_load import DEADLINE, SERVICE, Load, Replicas, Start, autoscale, config
from .client import version_of
from .conftest import hello_service, metric_value, wait_for
from .modes import wakegate_in_every_mode  # noqa: F401  (up, and split where it says so)


@pytest.mark.modes("up")
async def test_scales_up_under_load_to_the_expected_count(wakegate: Start) -> None:
    # Replicas that take 4 s to start: the one wanted shows before it is ready.
    slow_start = {"env": {"HELLO_STARTUP_DELAY_MS": "4000"}, "start_timeout": "30s"}
    wg = wakegate(config("staging", "staging", slow_start, max_replicas=4,
                         autoscale=autoscale()))
    replicas = Replicas(wg, "staging")
    assert replicas.poll() == (1, 1)
    assert wg.metric("wakegate_instance_max_replicas", environment="staging",
                     service=SERVICE) == 4.0
    load = Load(wg, "staging", clients=2)
    try:
        await wait_for(lambda: replicas.poll() == (1, 2), DEADLINE, "a second one wanted")
        shown = (await asyncio.to_thread(wg.cli, "status", check=True)).stdout
        line = next(ln for ln in shown.splitlines() if ln.startswith("staging"))
        assert " 1/2 " in line, shown  # ready/desired
        await replicas.until(2, "two clients, a target of 1")
        # It stays there: a third replica is never wanted for two requests at a time.
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            await asyncio.to_thread(replicas.poll)
        # Off the event loop, as every call here: the clients keep their load meanwhile.
        shown = (await asyncio.to_thread(wg.cli, "status", check=True)).stdout
        line = next(ln for ln in shown.splitlines() if ln.startswith("staging"))
        assert " 2/2 " in line, shown  # as many ready as wanted
        labels = {"environment": "staging", "service": SERVICE}
        metrics = await asyncio.to_thread(wg.metrics_text)
        assert metric_value(metrics, "wakegate_instance_desired_replicas", **labels) == 2.0
        concurrency = metric_value(metrics, "wakegate_instance_concurrency", **labels)
        assert concurrency is not None and 1.0 < concurrency <= 2.0, concurrency
    finally:
        await load.close()
    assert replicas.most() == 2, replicas.seen
    assert not load.failed(), load.failed()[:5]
    assert len(wg.service_pids()) == 2


@pytest.mark.modes("up")
async def test_never_above_max_replicas(wakegate: Start) -> None:
    wg = wakegate(config("staging", "staging", max_replicas=3, autoscale=autoscale()))
    replicas = Replicas(wg, "staging")
    load = Load(wg, "staging", clients=8)
    try:
        await replicas.until(3, "eight clients, max_replicas 3")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            await asyncio.to_thread(replicas.poll)
            assert len(await asyncio.to_thread(wg.service_pids)) <= 3
    finally:
        await load.close()
    assert replicas.most() == 3, replicas.seen
    assert not load.failed(), load.failed()[:5]


@pytest.mark.modes("up")
async def test_a_burst_scales_up_at_once_in_panic(wakegate: Start) -> None:
    # A stable window of a minute, idle for its first seconds: by it alone, the first
    # seconds of a burst of 8 want 1 or 2 replicas. The panic window sees 8 requests at a
    # time on 1 replica at once, and asks for 8 (4: max_replicas).
    wg = wakegate(config("staging", "staging", max_replicas=4,
                         autoscale=autoscale(window="60s", panic_window="300ms")))
    await wait_for(lambda: wg.status()[("staging", SERVICE)]["idle_seconds"] >= 4.0,
                   DEADLINE, "4 s of no load observed")
    replicas = Replicas(wg, "staging")
    load = Load(wg, "staging", clients=8)
    try:
        await replicas.until(4, "a burst of 8 on one replica")
    finally:
        await load.close()
    assert not load.failed(), load.failed()[:5]
    steps = re.findall(r"scaled up to (\d+) replicas \(concurrency ([\d.]+)(, panic)?\)",
                       wg.stderr())
    assert steps and all(panic for _, _, panic in steps), steps
    replicas_then, stable, _ = steps[-1]
    # The step to 4 was decided on a stable average that alone asks for 3 at most.
    assert int(replicas_then) == 4 and float(stable) <= 3.0, steps


@pytest.mark.modes("up", "split")
async def test_scales_down_one_step_at_a_time_without_a_failed_request(
    wakegate: Start,
) -> None:
    wg = wakegate(config("staging", "staging", max_replicas=3, scale_down_delay="200ms",
                         autoscale=autoscale(target_concurrency=2)))
    replicas = Replicas(wg, "staging")
    load = Load(wg, "staging", clients=6)
    try:
        await replicas.until(3, "six clients, a target of 2")
        await load.remove(4)  # two clients go on: one replica is enough for them
        replicas.seen.clear()
        before = len(load.answers)
        await replicas.until(1, "the load down to two clients")
        await wait_for(lambda: len(wg.service_pids()) == 1, DEADLINE, "drained replicas gone")
    finally:
        await load.close()
    assert not load.failed(), load.failed()[:5]
    assert replicas.steps() == [3, 2, 1], replicas.seen
    went = [t for (t, r, _), (_, before, _) in zip(replicas.seen[1:], replicas.seen, strict=False)
            if r < before]
    assert len(went) == 2 and went[1] - went[0] >= 0.4, went  # scale_down_delay apart
    assert len(load.answers) - before >= 20, "requests went on through both drains"


@pytest.mark.modes("up")
async def test_private_and_demo_never_scale_by_load(wakegate: Start) -> None:
    envs = {"private": {"idle_timeout": "1h", "autoscale": autoscale()},
            "demo": {"idle_timeout": "1h", "autoscale": autoscale()}}
    wg = wakegate({"environments": envs,
                   "services": {SERVICE: hello_service(environments=list(envs))}})
    await version_of(wg, "demo")  # awake
    replicas = Replicas(wg, "demo")
    load = Load(wg, "demo", clients=8)
    try:
        deadline = time.monotonic() + 2.5  # several windows of load far above the target
        while time.monotonic() < deadline:
            await asyncio.to_thread(replicas.poll)
    finally:
        await load.close()
    assert replicas.most() == 1, replicas.seen
    assert not load.failed(), load.failed()[:5]
    assert wg.metric("wakegate_instance_max_replicas", environment="demo",
                     service=SERVICE) == 1.0
    assert wg.metric("wakegate_instance_concurrency", environment="demo",
                     service=SERVICE) is None, "not scaled by load"
    assert "scaled up" not in wg.stderr()


@pytest.mark.modes("up")
async def test_promote_under_load_scales_the_preview_first(wakegate: Start) -> None:
    wg = wakegate(config("production", "production", min_replicas=1, max_replicas=3,
                         scale_down_delay="30s", autoscale=autoscale()))
    wg.cli("deploy", SERVICE, "2.0.0", "--env", "production", check=True)  # a preview of 1
    replicas = Replicas(wg, "production")
    load = Load(wg, "production", clients=6)
    try:
        await replicas.until(3, "the live colour under load")
        before = len(load.answers)
        out = (await asyncio.to_thread(wg.cli, "release", "promote", SERVICE, check=True)).stdout
        assert "2.0.0 is live" in out, out
        assert replicas.poll()[0] == 3, "the new live colour took over at the live size"
        assert await version_of(wg, "production") == "2.0.0"
        await wait_for(lambda: len(load.answers) >= before + 100, DEADLINE,
                       "the load to go on across the switch")
    finally:
        await load.close()
    assert not load.failed(), load.failed()[:5]
    log = wg.stderr()
    scaled = log.find("colour (preview) scaled to 3 replicas")
    assert 0 <= scaled < log.find("promoted to 2.0.0"), log


@pytest.mark.modes("up")
async def test_the_replica_that_goes_runs_on_until_the_drain_ends(wakegate: Start) -> None:
    # Out of the route table at once, stopped only after the environment's drain
    # (scale_down_delay, 3 s here): WebSockets open on it live until then.
    # 8 WebSockets count as 8 requests in flight: one replica at a target of 8.
    wg = wakegate(config("staging", "staging", max_replicas=2, scale_down_delay="3s",
                         autoscale=autoscale(target_concurrency=8)))
    replicas = Replicas(wg, "staging")
    load = Load(wg, "staging", clients=16)
    closed_at: list[float] = []

    async def echo_until_closed(i: int, ws: aiohttp.ClientWebSocketResponse) -> None:
        while True:
            await ws.send_str(f"{i}")
            if (await ws.receive()).type != aiohttp.WSMsgType.TEXT:
                closed_at.append(time.monotonic())
                return
            await asyncio.sleep(0.05)

    async with aiohttp.ClientSession() as http:
        try:
            await replicas.until(2, "16 clients, a target of 8")
            sockets = [await http.ws_connect(wg.base + "/ws",
                                             headers={"Host": wg.host(SERVICE, "staging")})
                       for _ in range(8)]
        finally:
            await load.close()
        echoes = [asyncio.ensure_future(echo_until_closed(i, ws))
                  for i, ws in enumerate(sockets)]
        try:
            await replicas.until(1, "the load gone but the sockets")
            went = time.monotonic()
            while time.monotonic() - went < 2.5:
                assert len(await asyncio.to_thread(wg.service_pids)) == 2, "stopped too soon"
            await wait_for(lambda: len(wg.service_pids()) == 1, DEADLINE, "the drain to end")
            assert all(at - went >= 2.5 for at in closed_at), "a socket closed too soon"
        finally:
            for task in echoes:
                task.cancel()
            await asyncio.gather(*echoes, return_exceptions=True)
            for ws in sockets:
                await ws.close()
    assert not load.failed(), load.failed()[:5]
