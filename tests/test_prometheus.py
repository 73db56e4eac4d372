"""A real Prometheus (the Debian package) scraping a controller and two proxies.

Prometheus runs as a child with its own config and storage in a temp directory,
on a free loopback port, scraping every 200 ms, with manifests/monitoring's
alerting rules loaded. Everything is asked of Prometheus' HTTP API
(/api/v1/targets, /api/v1/query, /api/v1/rules, /api/v1/alerts), never of the
/metrics text, and waited for with deadlines: every target is up; the idle time
of an idle instance grows from scrape to scrape and drops after a request; a
cold start is counted, with its duration; held requests are seen during a slow
cold start; every dashboard query runs; and when the controller goes away, the
proxies say so and the alert for it becomes pending.

(Prometheus takes target updates from its discovery at most every 5 s, so the
first scrape comes about 5 s after it starts: it is started while the proxies
start.)
"""

from __future__ import annotations

import asyncio
import itertools
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from .client import get_once
from .conftest import Split, free_port, hello_service
from .ops_stack import (
    RULES_FILE,
    Child,
    dashboard_queries,
    get_json,
    program,
    prometheus_query,
    running,
    running_split,
    with_grafana_variables,
)

SCRAPE_INTERVAL = "200ms"
SLOW_START_MS = 2000
DEADLINE = 15.0  # for anything Prometheus must see; a few scrape intervals normally
CONTROLLER_JOB, PROXY_JOB = "wakegate-controller", "wakegate-proxy"
DEMO = "demo"


class Stack:
    def __init__(self, sp: Split, prometheus: Child, port: int) -> None:
        self.sp = sp
        self.prometheus = prometheus
        self.url = f"http://127.0.0.1:{port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        self.prometheus.alive()
        return prometheus_query(self.url, expr)

    def value(self, expr: str) -> float | None:
        """The value of a query that yields at most one series."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def samples(self, selector: str, seconds: int = 10) -> list[tuple[float, float]]:
        """(timestamp, value) of the one series `selector` matches, over the last seconds."""
        result = self.query(f"{selector}[{seconds}s]")
        assert len(result) <= 1, (selector, result)
        return [(float(t), float(v)) for t, v in result[0]["values"]] if result else []

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
        return self.prometheus.wait_for(predicate, timeout, f"Prometheus to see {what}")


def prometheus_config(sp: Split) -> dict[str, Any]:
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                   "evaluation_interval": "500ms"},
        "rule_files": [str(RULES_FILE)],
        "scrape_configs": [
            {"job_name": CONTROLLER_JOB, "static_configs": [
                {"targets": [sp.controller.controller.removeprefix("http://")]}]},
            {"job_name": PROXY_JOB, "static_configs": [
                {"targets": [p.base.removeprefix("http://") for p in sp.proxies]}]},
        ],
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prometheus_bin = program("/usr/bin/prometheus", "prometheus")
    tmp = tmp_path_factory.mktemp("prometheus")
    config: dict[str, Any] = {
        "environments": {DEMO: {"idle_timeout": "15m"}},
        "services": {
            "hello": hello_service(environments=[DEMO]),
            "cold": hello_service(environments=[DEMO]),
            "slow": hello_service(environments=[DEMO],
                                  env={"HELLO_STARTUP_DELAY_MS": str(SLOW_START_MS)}),
        },
    }
    with running_split(tmp, config, proxies=0) as sp:
        for _ in range(2):
            sp.add_proxy(wait=False)
        directory = tmp / "prom"
        directory.mkdir()
        (directory / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config(sp)))
        port = free_port()
        prometheus = Child("prometheus", [
            prometheus_bin, f"--config.file={directory / 'prometheus.yml'}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ], directory)
        with running(prometheus):
            for proxy in sp.proxies:
                proxy.wait_up()
            stack = Stack(sp, prometheus, port)
            stack.wait(lambda: ready(stack.url), "itself ready (/-/ready)")
            yield stack


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/-/ready", timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def of(service: str, **more: str) -> str:
    labels = {"environment": DEMO, "service": service, **more}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def test_every_target_is_up_and_the_rules_are_loaded(stack: Stack) -> None:
    def targets() -> list[dict[str, Any]] | None:
        active = get_json(stack.url + "/api/v1/targets?state=active")["data"]["activeTargets"]
        if len(active) == 3 and all(t["health"] == "up" for t in active):
            return list(active)
        return None

    active = stack.wait(targets, "every target up (/api/v1/targets)")
    assert sorted(t["labels"]["job"] for t in active) == [CONTROLLER_JOB, PROXY_JOB, PROXY_JOB]
    up = stack.query("up")
    assert sorted((s["metric"]["job"], s["value"][1]) for s in up) == \
        [(CONTROLLER_JOB, "1"), (PROXY_JOB, "1"), (PROXY_JOB, "1")]

    def rules() -> list[dict[str, Any]] | None:
        groups = get_json(stack.url + "/api/v1/rules")["data"]["groups"]
        found = [r for g in groups for r in g["rules"]]
        return found if found and all(r["health"] == "ok" for r in found) else None

    loaded = stack.wait(rules, "the alerting rules evaluated without error")
    expected = [r["alert"] for g in yaml.safe_load(RULES_FILE.read_text())["groups"]
                for r in g["rules"]]
    assert [r["name"] for r in loaded] == expected


async def test_idle_seconds_grow_between_scrapes_and_drop_after_a_request(
    stack: Stack,
) -> None:
    proxy = stack.sp.proxies[0]
    idle = "wakegate_instance_idle_seconds" + of("hello")
    first = await get_once(proxy, "hello", DEMO)
    assert first.status == 200, first
    answered = time.time()

    def growing() -> list[float] | None:
        # From a few report intervals after the answer: the proxy reports its
        # activity every 100 ms, so the controller may count the request as in
        # flight (idle 0) for a moment after it ended.
        values = [v for t, v in stack.samples(idle) if t > answered + 0.3]
        return values if len(values) >= 4 else None

    values = await asyncio.to_thread(stack.wait, growing, "4 scrapes of the idle time")
    assert all(b > a for a, b in itertools.pairwise(values)), values
    # Idle for a while, as Prometheus sees it; then a request.
    before = await asyncio.to_thread(
        stack.wait, lambda: (v := stack.value(idle)) is not None and v >= 0.6 and v,
        "the instance idle for 0.6 s")
    again = await get_once(proxy, "hello", DEMO)
    assert again.status == 200 and not again.cold, again
    answered = time.time()

    def dropped() -> bool:
        # (The first scrape after the answer may come before the proxy's report.)
        return any(v < before for t, v in stack.samples(idle) if t > answered)

    await asyncio.to_thread(stack.wait, dropped, f"the idle time drop below {before:.2f} s")


async def test_a_cold_start_is_counted_with_its_duration(stack: Stack) -> None:
    proxy = stack.sp.proxies[1]
    assert stack.query("wakegate_cold_starts_total" + of("cold")) == []
    answer = await get_once(proxy, "cold", DEMO)
    assert answer.status == 200 and answer.cold, answer
    waited = float(answer.headers["Server-Timing"].split("dur=")[1]) / 1000

    counted = "sum(wakegate_cold_starts_total" + of("cold", result="success") + ")"
    await asyncio.to_thread(stack.wait, lambda: stack.value(counted) == 1,
                            "wakegate_cold_starts_total count the cold start")
    duration = "wakegate_cold_start_duration_seconds"
    assert stack.value(f"sum({duration}_count{of('cold')})") == 1
    seconds = stack.value(f"sum({duration}_sum{of('cold')})")
    assert seconds is not None and 0 < seconds <= waited + 0.05, (seconds, waited)
    assert stack.value(f'sum({duration}_bucket{of("cold", le="+Inf")})') == 1
    median = stack.value(f"histogram_quantile(0.5, sum by (le) ({duration}_bucket{of('cold')}))")
    assert median is not None and 0 < median <= 10, median
    # The controller's side of it.
    woke = "wakegate_scale_events_total" + of("cold", direction="up")
    await asyncio.to_thread(stack.wait, lambda: stack.value(woke) == 1,
                            "the wake-up in wakegate_scale_events_total")
    assert stack.value("wakegate_instance_replicas" + of("cold")) == 1


async def test_held_requests_are_seen_during_a_slow_cold_start(stack: Stack) -> None:
    a, b = stack.sp.proxies
    held = "wakegate_held_requests" + of("slow")
    assert not stack.query(f"{held} > 0")
    tasks = [asyncio.create_task(get_once(p, "slow", DEMO)) for p in (a, a, a, b, b)]
    try:
        def seen_while_held() -> bool:
            if all(t.done() for t in tasks):
                raise AssertionError("the cold start ended before Prometheus saw a held request")
            return (stack.value(f"sum({held})") or 0) > 0

        await asyncio.to_thread(stack.wait, seen_while_held, "held requests",
                                SLOW_START_MS / 1000 + 10)
        answers = await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    assert all(x.status == 200 and x.cold for x in answers), answers
    # Afterwards: what each proxy held at most, and nothing held now.
    peak = {s["metric"]["instance"]: float(s["value"][1])
            for s in stack.query(f"max by (instance) (max_over_time({held}[1m]))")}
    assert peak == {a.base.removeprefix("http://"): 3, b.base.removeprefix("http://"): 2}, peak
    await asyncio.to_thread(stack.wait, lambda: stack.value(f"sum({held})") == 0,
                            "no request held once the instance is ready")
    waited = stack.value(f"max(wakegate_cold_start_duration_seconds_sum{of('slow')})")
    assert waited is not None and waited >= SLOW_START_MS / 1000, waited


def test_every_dashboard_query_runs_in_prometheus(stack: Stack) -> None:
    for where, expr in dashboard_queries():
        query = with_grafana_variables(expr)
        stack.query(query)  # fails on a query it refuses
        if where.startswith("variable"):
            # This test may be the first on a fresh stack (pytest-xdist): wait for a scrape.
            stack.wait(lambda q=query: stack.query(q), f"{where}: {expr} to find an instance")


def test_a_proxy_that_lost_the_controller_is_seen_and_alerted(stack: Stack) -> None:
    """Last: it stops the controller."""
    connected = "wakegate_controller_connected"
    stack.wait(lambda: stack.value(f"sum({connected})") == 2, "both proxies connected")
    stack.sp.controller.stop()
    stack.wait(lambda: stack.value(f"sum({connected})") == 0
               and stack.value(f"count({connected})") == 2,
               "both proxies cut off from the controller")
    stack.wait(lambda: stack.value(f'up{{job="{CONTROLLER_JOB}"}}') == 0, "the controller down")

    def pending() -> set[str] | None:
        alerts = get_json(stack.url + "/api/v1/alerts")["data"]["alerts"]
        found = {a["labels"]["instance"] for a in alerts
                 if a["labels"]["alertname"] == "WakegateProxyLostController"
                 and a["state"] == "pending"}
        return found if len(found) == 2 else None

    instances = stack.wait(pending, "WakegateProxyLostController pending for both proxies")
    assert instances == {p.base.removeprefix("http://") for p in stack.sp.proxies}
