"""Split mode: `wakegate controller` and several `wakegate proxy` processes over loopback HTTP.

The proxies share one controller: they watch its route table, ask it to wake
instances and report their activity, which it combines. Most tests start one
controller and two proxies ("A" and "B"), each a real process on a free
loopback port. The first part unit-tests the pure pieces (the report
combiner, the drain before a stop, the wire formats) directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
import pytest

from controller.activity_reports import (
    ActivityReports,
    RemoteActivity,
    Report,
    parse_report,
)
from controller.spec import (
    READY,
    Route,
    RouteTable,
    WireError,
    route_to_wire,
    routes_to_wire,
    table_from_wire,
)

from .client import BURST_GAPS, bursts_across_sleep, get, paced
from .conftest import (
    HELLO,
    RUN_MARKER,
    Controller,
    Split,
    hello_service,
    wait_for,
)

SERVICE = "hello"
DEMO = "demo"
KEY = (DEMO, SERVICE)
LABELS = {"environment": DEMO, "service": SERVICE}
STARTING_LINE = "--- wakegate: starting"
SLEEP_DEADLINE = 5.0
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=30)

Start = Callable[..., Split]


def demo_config(idle_timeout: str = "15m", env: dict[str, str] | None = None,
                **environment: Any) -> dict[str, Any]:
    svc = hello_service(environments=[DEMO], env=dict(env or {}))
    return {
        "environments": {DEMO: {"idle_timeout": idle_timeout, **environment}},
        "services": {SERVICE: svc},
    }


def starts_in_log(sp: Split) -> int:
    return sp.log_of(DEMO, SERVICE).count(STARTING_LINE)


def session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=CLIENT_TIMEOUT,
                                 connector=aiohttp.TCPConnector(limit=0))


async def stays_ready_for(sp: Split, seconds: float) -> None:
    """Check, for `seconds`, that the instance never leaves ready (and never restarts)."""
    starts = starts_in_log(sp)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = await asyncio.to_thread(lambda: sp.status()[KEY])
        assert (row["state"], row["replicas"]) == ("ready", 1), row
        await asyncio.sleep(0.05)
    assert starts_in_log(sp) == starts
    assert sp.controller_metric("wakegate_scale_events_total", direction="down", **LABELS) \
        is None


# === unit tests: the pure pieces ===================================================


class FakeClock:
    """This module's own injectable clock (controller/activity_reports.py takes one)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def report(proxy: str, seq: int, ttl: float = 3.0, table: tuple[str, int] | None = None,
           **instances: tuple[int, float | None]) -> Report:
    """instances: demo=(in_flight, idle_seconds) for (demo, hello)."""
    return Report(proxy, seq, ttl, table, {(env, SERVICE): v for env, v in instances.items()})


def test_reports_of_all_proxies_are_combined() -> None:
    clock = FakeClock()
    reports = ActivityReports(clock)
    assert reports(KEY) == (0, 0.0)
    assert reports.add(report("a", 1, demo=(0, 5.0)))
    assert reports.add(report("b", 1, demo=(0, 2.0)))
    assert reports(KEY) == (0, clock.now - 2.0), "the latest end of any proxy"
    clock.now += 1
    assert reports.add(report("a", 2, demo=(3, 0.5)))
    # In flight on a: counted, and active at the time of the report.
    assert reports(KEY) == (3, clock.now)
    assert reports(("private", SERVICE)) == (0, 0.0)
    assert reports.add(report("b", 2, demo=(0, None))) and reports(KEY)[0] == 3


def test_older_report_of_a_proxy_is_ignored() -> None:
    reports = ActivityReports(FakeClock())
    assert reports.add(report("a", 5, demo=(2, None)))
    assert not reports.add(report("a", 4, demo=(0, 1.0)))
    assert not reports.add(report("a", 5, demo=(0, 1.0)))
    assert reports(KEY)[0] == 2


def test_a_proxy_counts_until_its_report_expires_then_is_forgotten() -> None:
    clock = FakeClock()
    reports = ActivityReports(clock)
    reports.add(report("a", 1, ttl=3.0, demo=(1, None)))  # a request in flight on a
    reports.add(report("b", 1, ttl=3.0, demo=(0, 10.0)))
    sent = clock.now
    clock.now += 2.9
    assert reports(KEY) == (1, sent)
    assert reports.live() == 2
    clock.now = sent + 3.0
    # Both expired: a's request may have gone on until its report expired.
    assert reports(KEY) == (0, sent + 3.0)
    assert reports.live() == 0
    assert reports.proxies() == []


def test_a_proxy_going_away_is_forgotten_at_once() -> None:
    clock = FakeClock()
    reports = ActivityReports(clock)
    reports.add(report("a", 1, demo=(0, 1.0)))
    clock.now += 0.5
    assert reports.add(report("a", 2, ttl=0.0, demo=(0, 0.2)))
    assert reports.live() == 0
    assert reports(KEY) == (0, clock.now - 0.2), "what it said last is kept"


class FakeFeed:
    """RouteFeed's drain side, recording what it was asked."""

    def __init__(self) -> None:
        self.version = 10
        self.drained: dict[tuple[str, str], int] = {}
        self.ready = True

    def drain(self, key: tuple[str, str]) -> tuple[str, int] | None:
        if not self.ready:
            return None
        if key not in self.drained:
            self.version += 1
            self.drained[key] = self.version
        return "E", self.drained[key]

    def undrain(self, key: tuple[str, str]) -> None:
        if self.drained.pop(key, None) is not None:
            self.version += 1

    def draining(self) -> Iterable[tuple[str, str]]:
        return self.drained.keys()


def drain_setup(idle: float = 10.0) -> tuple[FakeClock, FakeFeed, RemoteActivity]:
    clock = FakeClock()
    feed = FakeFeed()
    source = RemoteActivity(ActivityReports(clock), lambda key: (idle, 0.0), feed,
                            clock=clock, recheck=0.025)
    return clock, feed, source


def test_idle_instance_is_drained_before_the_scaler_may_stop_it() -> None:
    clock, feed, source = drain_setup(idle=10.0)
    source.report(report("a", 1, table=("E", 10), demo=(0, 20.0)))
    source.report(report("b", 2, table=("E", 10), demo=(0, 30.0)))
    # Idle, but the proxies still route to it: "idle, but ask again shortly".
    in_flight, last = source(KEY)
    assert feed.drained == {KEY: 11}
    assert in_flight == 0
    assert clock.now - last == pytest.approx(10.0 - 0.025)
    # a has applied the drained table, b not yet.
    source.report(report("a", 2, table=("E", 11), demo=(0, 20.0)))
    assert clock.now - source(KEY)[1] < 10.0
    source.report(report("b", 3, table=("E", 11), demo=(0, 30.0)))
    assert source(KEY) == (0, clock.now - 20.0), "both have it: the real idle time"
    assert feed.drained == {KEY: 11}


def test_activity_during_a_drain_ends_it() -> None:
    clock, feed, source = drain_setup(idle=10.0)
    source.report(report("a", 1, table=("E", 10), demo=(0, 20.0)))
    source(KEY)
    assert KEY in feed.drained
    # The report that acknowledges the drain shows a request that got there first.
    source.report(report("a", 2, table=("E", 11), demo=(1, None)))
    assert feed.drained == {}
    assert source(KEY) == (1, clock.now)
    # An activation request (a request held by the drain) ends it too, and counts.
    source.report(report("a", 3, table=("E", 12), demo=(0, 20.0)))
    source(KEY)
    assert KEY in feed.drained
    clock.now += 1
    source.activated(KEY)
    assert feed.drained == {}
    assert source(KEY) == (0, clock.now)


def test_no_drain_without_proxies_nor_for_instances_that_may_not_sleep() -> None:
    clock, feed, source = drain_setup(idle=10.0)
    assert source(KEY) == (0, 0.0)
    assert feed.drained == {}
    source.report(report("a", 1, table=("E", 10), demo=(0, 20.0)))
    feed.ready = False  # the feed refuses: not READY
    assert source(KEY) == (0, clock.now - 20.0)


def test_a_proxy_that_never_applies_the_drain_is_not_waited_for_past_its_ttl() -> None:
    clock, _, source = drain_setup(idle=10.0)
    source.report(report("a", 1, ttl=3.0, table=("E", 10), demo=(0, 20.0)))
    source(KEY)
    for seq in range(2, 5):  # it keeps reporting, never with the drained table
        clock.now += 1.0
        source.report(report("a", seq, ttl=3.0, table=("E", 10), demo=(0, 20.0)))
    assert source(KEY) == (0, clock.now - 20.0)


def test_bad_reports_are_refused_with_a_reason() -> None:
    good = {"proxy": "p", "seq": 1, "ttl": 3, "table": {"epoch": "E", "version": 2},
            "instances": [{"environment": DEMO, "service": SERVICE, "in_flight": 1,
                           "idle_seconds": None}]}
    parsed = parse_report(good)
    assert (parsed.proxy, parsed.seq, parsed.ttl, parsed.table) == ("p", 1, 3.0, ("E", 2))
    assert parsed.instances == {KEY: (1, None)}
    bad: list[tuple[Any, str]] = [
        ([], "JSON object"),
        ({**good, "proxy": ""}, "proxy"),
        ({**good, "seq": -1}, "seq"),
        ({**good, "seq": True}, "seq"),
        ({**good, "ttl": "3s"}, "ttl"),
        ({**good, "table": {"epoch": 1}}, "table"),
        ({**good, "instances": {}}, "instances"),
        ({**good, "instances": [{"environment": DEMO}]}, "instances[0]"),
        ({**good, "instances": [{**good["instances"][0], "in_flight": 1.5}]}, "in_flight"),
        ({**good, "instances": [{**good["instances"][0], "idle_seconds": -1}]},
         "idle_seconds"),
    ]
    for body, field in bad:
        with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
            parse_report(body)


def sample_route(**overrides: Any) -> Route:
    fields: dict[str, Any] = {
        "environment": DEMO, "service": SERVICE, "host": "hello.demo.localhost",
        "access": "api_key", "state": READY, "endpoints": ("127.0.0.1:1234",),
        "key_hashes": (b"\x01" * 32,), "hold_timeout": 60.0, "hold_queue_size": 1000,
        "ignore_paths": ("/healthz",), "ignore_user_agents": ("kube-probe",),
        "version": "1.0.0", "failures": 2, "error": "boom", "backoff_until": 100.0,
    }
    fields.update(overrides)
    return Route(**fields)


def test_route_table_wire_round_trip_and_refusals() -> None:
    route = sample_route()
    wire = json.loads(json.dumps(routes_to_wire(RouteTable.build(7, [route]))))
    table = table_from_wire(3, wire, clock_shift=50.0)
    assert table.version == 3
    # A reading of the sender's monotonic clock, moved into the receiver's.
    assert table.by_host["hello.demo.localhost"] == sample_route(backoff_until=150.0)
    no_backoff = route_to_wire(sample_route(backoff_until=0.0))
    assert table_from_wire(1, [no_backoff], 50.0).by_key[KEY].backoff_until == 0.0
    broken: list[tuple[Any, str]] = [
        ({}, "routes: must be a list"),
        ([{**wire[0], "state": "dancing"}], "state"),
        ([{**wire[0], "endpoints": "127.0.0.1:1"}], "endpoints"),
        ([{**wire[0], "key_hashes": ["zz"]}], "key_hashes"),
        ([{**wire[0], "key_hashes": ["00"]}], "key_hashes"),
        ([{**wire[0], "hold_queue_size": True}], "hold_queue_size"),
        ([{**wire[0], "access": "everyone"}], "access"),
        ([7], r"routes\[0\]"),
    ]
    for routes, message in broken:
        with pytest.raises(WireError, match=message):
            table_from_wire(1, routes)


# === real processes: one controller, proxies A and B ================================


async def test_cold_start_through_a_then_warm_through_b(split: Start) -> None:
    sp = split(demo_config())
    a, b = sp.proxies
    assert sp.status()[KEY]["state"] == "sleeping"
    async with session() as http:
        first = await get(http, a, SERVICE, DEMO)
        assert first.status == 200 and first.cold, first
        await asyncio.to_thread(sp.wait_tables_current)
        second = await get(http, b, SERVICE, DEMO)
        assert second.status == 200, second
        assert not second.cold, "B had the new table: no hold"
        assert second.body["pid"] == first.body["pid"]
    row = sp.status()[KEY]
    assert (row["state"], row["replicas"]) == ("ready", 1)
    assert sp.service_pids() == [first.body["pid"]]
    assert starts_in_log(sp) == 1
    assert a.metric("wakegate_cold_starts_total", result="success", **LABELS) == 1
    assert b.metric("wakegate_cold_starts_total", result="success", **LABELS) is None
    assert sp.metric_total("wakegate_requests_total", code="200", **LABELS) == 2


async def test_many_held_requests_on_two_proxies_share_one_cold_start(split: Start) -> None:
    sp = split(demo_config(env={"HELLO_STARTUP_DELAY_MS": "300"}))
    count = 200
    async with session() as http:
        answers = await asyncio.gather(
            *(get(http, sp.proxies[i % 2], SERVICE, DEMO) for i in range(count))
        )
    assert sorted({a.status for a in answers}) == [200], \
        [a for a in answers if a.status != 200][:3]
    assert all(a.cold for a in answers), "every request was held through the cold start"
    pids = {a.body["pid"] for a in answers}
    assert len(pids) == 1, pids
    assert sp.service_pids() == list(pids)
    assert starts_in_log(sp) == 1, sp.log_of(DEMO, SERVICE)
    for proxy in sp.proxies:  # each proxy held its half on its own hold
        assert proxy.metric("wakegate_cold_starts_total", result="success", **LABELS) == 1
        assert proxy.metric("wakegate_requests_total", code="200", **LABELS) == count / 2


async def test_private_needs_its_key_through_every_proxy(split: Start) -> None:
    sp = split({"environments": {"private": {}}, "services": {SERVICE: hello_service(
        environments=["private"])}})
    key = sp.keys["private/hello"]
    wrong = "wg_" + "Q" * 43
    async with session() as http:
        for proxy in sp.proxies:
            for headers in ({}, {"X-API-Key": wrong}, {"Authorization": f"Bearer {wrong}"}):
                denied = await get(http, proxy, SERVICE, "private", **headers)
                assert denied.status == 401, denied
                assert denied.headers["WWW-Authenticate"] == 'ApiKey realm="wakegate"'
                assert denied.body["error"] == "unauthorized"
        assert sp.state("private", SERVICE) == "sleeping", "refused requests wake nothing"
        a, b = sp.proxies
        first = await get(http, a, SERVICE, "private", **{"X-API-Key": key})
        assert first.status == 200 and first.cold, first
        second = await get(http, b, SERVICE, "private", Authorization=f"Bearer {key}")
        assert second.status == 200 and not second.cold, second
    for proxy in sp.proxies:
        assert proxy.metric("wakegate_auth_failures_total", environment="private",
                            service=SERVICE, reason="missing") == 1


async def test_traffic_on_b_alone_keeps_it_awake_while_a_is_idle(split: Start) -> None:
    sp = split(demo_config("400ms"))
    a, b = sp.proxies
    async with session() as http:
        first = await get(http, b, SERVICE, DEMO)
        assert first.status == 200 and first.cold, first
        # Requests that end (B's reports carry the time since the last one ended).
        sent = 0
        # Every 0.1 s for 1.5 s: the traffic's own pace, well under the idle timeout.
        async for answer in paced(lambda: get(http, b, SERVICE, DEMO)):
            sent += 1
            assert answer.status == 200 and not answer.cold, (sent, answer)
            assert answer.body["pid"] == first.body["pid"]
        assert sent >= 10
        proxies = sp.live_proxies()
        assert len(proxies) == 2, proxies
        assert sorted(p["instances"] for p in proxies) == [0, 1], "A saw no request at all"
        # A request in flight (B's reports carry it) for longer than the idle timeout.
        async with http.get(b.base + "/stream?chunks=12&interval_ms=100",
                            headers={"Host": "hello.demo.localhost"}) as r:
            assert r.status == 200
            lines = [line async for line in r.content]
            assert len(lines) == 12
            assert sp.state(DEMO, SERVICE) == "ready"
    assert starts_in_log(sp) == 1
    assert sp.controller_metric("wakegate_scale_events_total", direction="down",
                                **LABELS) is None
    sp.wait_state(DEMO, SERVICE, "sleeping", timeout=SLEEP_DEADLINE)
    assert a.metric("wakegate_requests_total", code="200", **LABELS) is None


async def test_sleeps_after_idle_timeout_when_no_proxy_reports_activity(split: Start) -> None:
    idle = 0.3
    sp = split(demo_config(f"{int(idle * 1000)}ms"))
    a, b = sp.proxies
    async with session() as http:
        first = await get(http, a, SERVICE, DEMO)
        assert first.status == 200 and first.cold, first
        ended = time.monotonic()
        await wait_for(lambda: sp.state(DEMO, SERVICE) == "sleeping", SLEEP_DEADLINE,
                       "the instance to sleep")
        assert time.monotonic() - ended >= idle, "it slept before its idle timeout"
        await wait_for(lambda: not sp.service_pids(), 2.0, "the service process to be gone")
        assert sp.controller_metric("wakegate_scale_events_total", direction="down",
                                    **LABELS) == 1
        again = await get(http, b, SERVICE, DEMO)
        assert again.status == 200 and again.cold, again
        assert again.body["pid"] != first.body["pid"]


async def test_a_killed_proxy_counts_until_its_report_expires(split: Start) -> None:
    idle, ttl = 0.3, 0.6  # a report every 200 ms holds for 3 of them
    sp = split(demo_config(f"{int(idle * 1000)}ms"), report_interval="200ms")
    a, b = sp.proxies
    async with session() as http:
        woken = await get(http, b, SERVICE, DEMO)
        assert woken.status == 200 and woken.cold, woken
        stream = await http.get(a.base + "/stream?chunks=400&interval_ms=25",
                                headers={"Host": "hello.demo.localhost"})
        try:
            assert stream.status == 200
            await stream.content.readline()
            await wait_for(lambda: any(p["in_flight"] for p in sp.live_proxies()), 2.0,
                           "A to report its request in flight")
            await stays_ready_for(sp, 2 * idle)  # in flight on A: awake
            a.stop(signal.SIGKILL)
            killed = time.monotonic()
            # Until A's last report expires (>= 0.4 s from now) it still counts.
            await stays_ready_for(sp, ttl - 0.2 - 0.05)
            await wait_for(lambda: sp.state(DEMO, SERVICE) == "sleeping", SLEEP_DEADLINE,
                           "the instance to sleep once A's report expired")
            slept = time.monotonic() - killed
        finally:
            stream.close()
    # Its report expired at least ttl - interval after the kill, then idle_timeout passed.
    assert slept >= ttl - 0.2 + idle - 0.05, slept
    assert [p["in_flight"] for p in sp.live_proxies()] == [0]


def outliving_service() -> dict[str, Any]:
    """hello run by a shell that does not exec it: like a pod, it outlives the controller.

    (The local runtime's replicas die with the controller; only the shell does here.)
    """
    return hello_service(environments=[DEMO],
                         command=f"/bin/sh -c '{{python}} {HELLO} & wait'")


async def test_proxies_keep_serving_with_their_last_table_when_the_controller_dies(
    split: Start,
) -> None:
    sp = split({"environments": {DEMO: {}}, "services": {SERVICE: outliving_service()}})
    a, b = sp.proxies
    async with session() as http:
        first = await get(http, a, SERVICE, DEMO)
        assert first.status == 200 and first.cold, first
        pid = first.body["pid"]
        sp.controller.stop(signal.SIGKILL)
        try:
            os.kill(pid, 0)
            for i in range(20):
                answer = await get(http, sp.proxies[i % 2], SERVICE, DEMO)
                assert answer.status == 200 and not answer.cold, (i, answer)
                assert answer.body["pid"] == pid
            for proxy in (a, b):
                await wait_for(lambda p=proxy: "cannot reach the controller" in p.stderr(),
                               5.0, f"{proxy.name} to notice the controller is gone")
            # Serving on while the links retry: the outage is logged once, not per retry.
            until = time.monotonic() + 1.5
            while time.monotonic() < until:
                answer = await get(http, a, SERVICE, DEMO)
                assert answer.status == 200 and answer.body["pid"] == pid, answer
                await asyncio.sleep(0.05)
            for proxy in (a, b):
                assert proxy.readyz() == 200, "it still has a route table"
                assert proxy.stderr().count("cannot reach the controller") == 1, \
                    proxy.stderr()
        finally:
            os.kill(pid, signal.SIGKILL)  # the replica the dead controller left


async def test_request_held_while_the_controller_is_down_is_answered_when_it_is_back(
    split: Start,
) -> None:
    sp = split(demo_config(hold_timeout="20s"))
    a, b = sp.proxies
    sp.controller.stop(signal.SIGKILL)
    async with session() as http:
        started = time.monotonic()
        held = asyncio.create_task(get(http, a, SERVICE, DEMO))
        await wait_for(lambda: a.metric("wakegate_held_requests", **LABELS) == 1, 5.0,
                       "the request to be held")
        await wait_for(lambda: "cannot reach the controller" in a.stderr(), 5.0,
                       "A to fail to deliver the activation")
        assert not held.done()
        await asyncio.to_thread(sp.controller.start)
        answer = await asyncio.wait_for(held, 20.0)
        assert answer.status == 200 and answer.cold, answer
        assert time.monotonic() - started < 20.0
        await asyncio.to_thread(sp.wait_tables_current)  # B's watch backs off up to 1 s
        warm = await get(http, b, SERVICE, DEMO)
        assert warm.status == 200 and not warm.cold, warm
        assert warm.body["pid"] == answer.body["pid"]
    assert "answers again" in a.stderr()


async def test_proxies_take_a_restarted_controllers_table_though_its_version_is_lower(
    split: Start,
) -> None:
    sp = split(demo_config("300ms"))
    a, b = sp.proxies
    async with session() as http:
        first = await get(http, a, SERVICE, DEMO)
        assert first.status == 200 and first.cold, first
        sp.wait_state(DEMO, SERVICE, "sleeping", timeout=SLEEP_DEADLINE)
        second = await get(http, b, SERVICE, DEMO)
        assert second.status == 200 and second.cold, second
        before = sp.controller.api("/v1/proxies")
        sp.restart_controller()  # stops the instance with it
        after = sp.controller.api("/v1/proxies")
        assert after["epoch"] != before["epoch"]
        assert after["version"] < before["version"], (before["version"], after["version"])

        def both_on_the_new_table() -> bool:
            tables = [p["table"] for p in sp.live_proxies()]
            return len(tables) == 2 and all(
                t is not None and t["epoch"] == after["epoch"] for t in tables
            )

        await wait_for(both_on_the_new_table, 5.0, "both proxies to take the new table")
        assert sp.state(DEMO, SERVICE) == "sleeping"
        woken = await get(http, b, SERVICE, DEMO)
        assert woken.status == 200 and woken.cold, "B knew it was asleep: held, woken"
        assert woken.body["pid"] not in (first.body["pid"], second.body["pid"])
        warm = await get(http, a, SERVICE, DEMO)
        assert warm.status == 200 and not warm.cold and warm.body["pid"] == woken.body["pid"]


async def test_with_a_token_every_v1_call_needs_it(split: Start) -> None:
    token = "test-token-" + "x" * 20
    sp = split(demo_config(), token=token)
    api = sp.controller.controller
    for path in ("/v1/status", "/v1/routes", "/v1/proxies"):
        for sent in (None, "wrong"):
            status, body, _ = sp.controller.call("GET", path, token=sent)
            assert status == 401, (path, status, body)
            assert body["error"] == "unauthorized" and "Bearer" in body["message"], body
        status, _, _ = sp.controller.call("GET", path, token=token)
        assert status == 200, path
    status, body, _ = sp.controller.call("POST", "/v1/activate",
                                         {"environment": DEMO, "service": SERVICE}, token=None)
    assert status == 401 and body["error"] == "unauthorized"
    for open_path in ("/healthz", "/readyz", "/metrics"):
        with urllib.request.urlopen(api + open_path, timeout=10) as resp:
            assert resp.status == 200, open_path
    assert sp.state(DEMO, SERVICE) == "sleeping"

    # Proxies given the token work; one without it never gets a table, and says why.
    async with session() as http:
        answer = await get(http, sp.proxies[0], SERVICE, DEMO)
        assert answer.status == 200 and answer.cold, answer
    lost = sp.add_proxy(wait=False, without_token=True)
    lost.wait_up(table=False)
    await wait_for(lambda: "refused this proxy's token" in lost.stderr(), 5.0,
                   "the proxy without the token to say what is wrong")
    assert lost.readyz() == 503
    assert token not in lost.stderr() and token not in sp.controller.stderr()
    assert "ready" in sp.controller.cli("status", check=True).stdout


def test_validate_warns_of_a_controller_on_the_network_without_a_token(tmp_path: Any) -> None:
    config = demo_config()
    config["listen"] = {"controller": "0.0.0.0:8081"}
    controller = Controller(tmp_path, config, "open")
    env = {**controller.env(), "WAKEGATE_CONTROLLER": ""}
    warned = subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", "-c", str(controller.config_path)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20)
    assert warned.returncode == 0, warned.stderr
    assert "ok (" in warned.stdout and "1 warning" in warned.stdout, warned.stdout
    assert (f"{controller.config_path}: listen.controller: warning: 0.0.0.0 is not a loopback "
            "address and WAKEGATE_TOKEN is not set") in warned.stderr, warned.stderr
    quiet = subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", "-c", str(controller.config_path)],
        cwd=tmp_path, env={**env, "WAKEGATE_TOKEN": "t" * 32}, capture_output=True, text=True,
        timeout=20)
    assert quiet.returncode == 0 and "warning" not in quiet.stdout + quiet.stderr, quiet


@pytest.mark.parametrize(("args", "complaint"), [
    (["--report-interval", "0"], "--report-interval 0"),
    (["--report-interval", "soon"], "--report-interval soon"),
    (["--listen", "127.0.0.1:http"], "--listen"),
    (["--controller", "ftp://127.0.0.1:1"], "--controller"),
])
def test_proxy_with_bad_options_says_which_and_exits_2(
    tmp_path: Any, args: list[str], complaint: str,
) -> None:
    env = {**os.environ, "WAKEGATE_TEST_RUN": RUN_MARKER}
    env.pop("WAKEGATE_CONTROLLER", None)
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "proxy", "--controller",
         "http://127.0.0.1:1", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=20,
    )
    assert result.returncode == 2, result.stderr
    assert complaint in result.stderr and "Traceback" not in result.stderr, result.stderr


async def test_route_watch_and_api_errors(split: Start) -> None:
    sp = split(demo_config(), proxies=0)
    token = sp.controller.api_token()
    status, table, _ = sp.controller.call("GET", "/v1/routes", token=token)
    assert status == 200
    epoch, version = table["epoch"], table["version"]
    assert [r["host"] for r in table["routes"]] == ["hello.demo.localhost"]
    # Nothing new: answered 304 once the wait is over.
    started = time.monotonic()
    status, _, _ = sp.controller.call(
        "GET", f"/v1/routes?epoch={epoch}&version={version}&wait=0.3", token=token)
    assert status == 304 and time.monotonic() - started >= 0.3
    # A watch is answered as soon as the table changes.
    watch = asyncio.create_task(asyncio.to_thread(
        sp.controller.call, "GET", f"/v1/routes?epoch={epoch}&version={version}&wait=25",
        token=token))
    # Whether the watch gets there before the change or after it, it is answered at once.
    await asyncio.sleep(0.05)
    status, body, _ = sp.controller.call("POST", "/v1/activate",
                                         {"environment": DEMO, "service": SERVICE}, token=token)
    assert status == 202 and body["environment"] == DEMO, body
    status, newer, _ = await asyncio.wait_for(watch, 10.0)
    assert status == 200 and newer["version"] > version, newer
    # A restarted controller's table is new whatever its version: another epoch.
    status, _, _ = sp.controller.call(
        "GET", f"/v1/routes?epoch=other&version={version}&wait=25", token=token)
    assert status == 200

    bad = [
        ("GET", "/v1/routes?version=twelve", None, 400, "bad_request", "version"),
        ("GET", "/v1/routes?wait=-1", None, 400, "bad_request", "negative"),
        ("POST", "/v1/activate", b"{not json", 400, "bad_request", "not valid JSON"),
        ("POST", "/v1/activate", b"[]", 400, "bad_request", "environment"),
        ("POST", "/v1/activate", json.dumps({"environment": "qa", "service": SERVICE}).encode(),
         404, "unknown_instance", "qa/hello"),
        ("POST", "/v1/activity", json.dumps({"proxy": "p"}).encode(), 400, "bad_request",
         "seq"),
        ("POST", "/v1/routes", b"{}", 405, "method_not_allowed", "/v1/routes"),
        ("GET", "/v1/nothing", None, 404, "not_found", "/v1/nothing"),
    ]
    for method, path, body, want, code, words in bad:
        status, answer, _ = sp.controller.call(method, path, body, token=token)
        assert status == want, (path, status, answer)
        assert answer["error"] == code and words in answer["message"], (path, answer)
    assert "Traceback" not in sp.controller.stderr()


async def test_burst_across_the_moment_of_sleep_through_two_proxies_gets_no_error(
    split: Start,
) -> None:
    """test_sleep's burst, spread over two proxies: the drain before a stop keeps it clean."""
    idle = 0.2  # what BURST_GAPS are aimed at
    sp = split(demo_config(f"{int(idle * 1000)}ms"), report_interval="50ms")
    async with session() as http:
        # Request i of a burst (and the one before burst n) through proxy i % 2 (n % 2).
        seen = await bursts_across_sleep(
            lambda i: get(http, sp.proxies[i % 2], SERVICE, DEMO))
    errors, caught_asleep, gaps = seen.errors, seen.caught_asleep, BURST_GAPS
    assert not errors, f"{len(errors)} failed requests (gap, answer): {errors[:5]}"
    assert caught_asleep >= 2, f"only {caught_asleep} bursts met a sleeping instance"
    assert caught_asleep < len(gaps), "every burst met it asleep: none came before the moment"
    for code in ("502", "503", "504"):
        assert sp.metric_total("wakegate_requests_total", code=code, **LABELS) == 0
