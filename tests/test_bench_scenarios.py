"""The scenarios of bench/ at a tiny size: they run, count right and report sanely.

Never timed here: speed is measured by `make bench`, not asserted in tests.
Every process a scenario starts inherits a marker (or, for nginx, which
rewrites its environment, has this test's directory in its command line);
after each test none may be left.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import autoscale, cpu, hold, openloop, report, routes, sleep_accuracy, warm
from bench.tools import (
    REPO,
    find_tool,
    free_port,
    latency_summary,
    parse_wrk,
    percentile,
    wait_http,
)

from .procs import cmdline, live_pids, processes_with

MARKER = "WAKEGATE_BENCH_TEST"


def _leftovers(marker: str, folder: str) -> list[int]:
    """Live processes (but this one) marked with `marker`, or run from under `folder`."""
    marked = set(processes_with(MARKER, marker))
    return [pid for pid in live_pids() if pid != os.getpid()
            and (pid in marked or any(folder.encode() in arg for arg in cmdline(pid)))]


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Marked children, temporary files under tmp_path; nothing left running afterwards."""
    marker = uuid.uuid4().hex
    monkeypatch.setenv(MARKER, marker)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    yield tmp_path
    deadline = time.monotonic() + 5
    while (left := _leftovers(marker, str(tmp_path))) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left behind: {left}"


@pytest.fixture
def python_backend(isolated: Path) -> Iterator[int]:
    """The asyncio backend on a free port (its port); stopped by pid."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.backend", "--python", "--port",
                             str(port)], cwd=REPO, stdin=subprocess.DEVNULL)
    try:
        wait_http(port, proc=proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


# --- the pieces ---


def test_percentiles_are_nearest_rank() -> None:
    values = [i / 1000 for i in range(1, 1001)]  # 1 ms .. 1000 ms
    assert percentile(values, 50) == 0.5
    assert percentile(values, 99) == 0.99
    assert percentile(values, 99.9) == 0.999
    assert percentile([0.007], 99.9) == 0.007
    summary = latency_summary(list(reversed(values)))
    assert summary["n"] == 1000
    assert (summary["p50_ms"], summary["p99_ms"], summary["p999_ms"], summary["max_ms"]) == (
        500.0, 990.0, 999.0, 1000.0)


def test_wrk_output_is_parsed() -> None:
    output = """Running 5s test @ http://127.0.0.1:8080/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
    Req/Sec    58.00k     1.00k   60.00k    70.00%
  Latency Distribution
     50%  850.00us
     75%    1.20ms
     90%    1.50ms
     99%    2.00s
  290000 requests in 5.00s, 40.00MB read
  Socket errors: connect 0, read 2, write 1, timeout 3
  Non-2xx or 3xx responses: 7
Requests/sec:  58000.12
Transfer/sec:      8.00MB
"""
    result = parse_wrk(output)
    assert result["rps"] == 58000.12
    assert (result["p50_ms"], result["p90_ms"], result["p99_ms"]) == (0.85, 1.5, 2000.0)
    assert (result["requests"], result["errors"], result["non_2xx"]) == (290000, 6, 7)


async def test_responses_are_read_whole_chunked_or_not() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                     b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    first = await openloop.read_response(reader)
    assert (first.status, first.keep_alive, first.body) == (200, True, b"hello")
    second = await openloop.read_response(reader)
    assert (second.status, second.keep_alive, second.body) == (503, False, b"abcde")
    assert second.headers["transfer-encoding"] == "chunked"


# --- the open-loop generator ---


def test_open_loop_sends_the_schedule_and_counts_every_answer(python_backend: int) -> None:
    result = openloop.run(python_backend, "localhost", rate=200, seconds=1.0, connections=4)
    assert result["scheduled"] == 200
    assert result["completed"] == 200 and result["errors"] == 0, result
    assert result["statuses"] == {"200": 200}
    latency = result["latency"]
    assert latency["n"] == 200
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["p999_ms"] <= latency["max_ms"]
    # Measured from the scheduled time, so never below the time from the actual send.
    assert latency["p50_ms"] >= result["service_latency"]["p50_ms"]
    assert result["achieved_rps"] > 0
    assert openloop.sustained(result) in (True, False)


def test_open_loop_splits_the_schedule_over_processes(python_backend: int) -> None:
    result = openloop.run(python_backend, "localhost", rate=300, seconds=0.5, connections=4,
                          processes=2)
    assert result["processes"] == 2
    assert result["scheduled"] == 150 and result["completed"] == 150, result


def test_open_loop_counts_refused_requests_as_errors(isolated: Path) -> None:
    result = openloop.run(free_port(), "localhost", rate=100, seconds=0.2, connections=2)
    assert result["scheduled"] == 20
    assert result["completed"] == 0 and result["errors"] == 20, result
    assert not openloop.sustained(result)


# --- the scenarios ---


def _pids(described: list[str]) -> list[int]:
    return [int(d.rsplit("(pid ", 1)[1].rstrip(")")) for d in described]


def test_warm_scenario_compares_every_target(isolated: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[int, str] = {}  # every counted process, while it ran: pid -> its command line
    snapshot = cpu.snapshot

    def watched(counted: list[cpu.Counted]) -> dict[int, int]:
        for c in counted:
            seen[c.pid] = " ".join(cpu.cmdline(c.pid))
        return snapshot(counted)

    monkeypatch.setattr(cpu, "snapshot", watched)
    result = warm.run([1, 2], seconds=1, rounds=1, warmup=0, rate=200, openloop_seconds=0.5,
                      openloop_rounds=1, openloop_connections=4)
    targets, skipped = result["targets"], result["skipped"]
    assert {"direct", "pipe", "httptools", "wakegate-w1", "wakegate-w1-nolog",
            "wakegate-w1-aiohttp"} <= set(targets), result
    for name in ("nginx", "haproxy", "caddy", "wakegate-w2"):
        # Either measured, or skipped with a reason (a missing tool, an option not there).
        assert (name in targets) != bool(skipped.get(name)), (name, result)
    for name, target in targets.items():
        opened = target["open_loop"]
        assert opened["completed"] == opened["scheduled"] == 100, (name, opened)
        assert opened["errors"] == 0, (name, opened)
        pids = _pids(target["cpu_counted"])
        assert pids, (name, target)
        if find_tool("wrk"):
            closed = target["closed_loop"]
            assert closed["rps"] > 0 and closed["errors"] == 0, (name, closed)
            assert closed["cpu_us_per_request"] > 0 and closed["cpu_s"] > 0, (name, closed)
            # The counted processes were there when measured (their /proc entries were read).
            assert set(map(int, closed["cpu_s_by_pid"])) == set(pids) <= set(seen), (name, seen)
    for name in ("pipe", "httptools"):  # the references answer like the backend: 200, no error
        assert targets[name]["open_loop"]["statuses"] == {"200": 100}, targets[name]
    # wakegate: itself and its proxy workers, never the backend it runs as a service.
    for name, target in targets.items():
        if name.startswith("wakegate"):
            workers = 2 if name == "wakegate-w2" else 1
            assert len(target["cpu_counted"]) == workers, (name, target["cpu_counted"])
            assert target["cpu_not_counted"], (name, target)  # the backend, a child of it
            assert all("nginx" not in seen[pid] and "bench.backend" not in seen[pid]
                       for pid in _pids(target["cpu_counted"]) if pid in seen), (name, seen)
    if "nginx" in targets:  # its master and its one worker
        assert len(targets["nginx"]["cpu_counted"]) == 2, targets["nginx"]
    if find_tool("wrk"):
        ratio = result["ratios"]["throughput"]["wakegate-w1/direct"]
        assert ratio == round(targets["wakegate-w1"]["closed_loop"]["rps"]
                              / targets["direct"]["closed_loop"]["rps"], 3)
        if "nginx" in targets:
            cpu_ratio = result["ratios"]["cpu_per_request"]["wakegate-w1/nginx"]
            assert cpu_ratio == round(targets["wakegate-w1"]["closed_loop"]["cpu_us_per_request"]
                                      / targets["nginx"]["closed_loop"]["cpu_us_per_request"], 3)
            assert result["bar"]["cpu_ratio"] == cpu_ratio
            assert result["bar"]["pass"] in (True, False)
    else:
        assert "closed loop" in skipped
    assert "wakegate-w1" in result["ratios"]["added_p50_ms"]
    table = report.warm_table(result)
    assert "| wakegate-w1 (1 worker) |" in table
    assert "CPU µs/req" in table and "Bar of issue 12" in table


def test_hold_scenario_answers_every_held_request(isolated: Path) -> None:
    result = hold.run(connections=20, start_delay=0.5)
    assert result["answered_200"] == 20, result
    assert result["cold_start_header"] == 20, result  # each one was held, not forwarded
    assert result["statuses"] == {"200": 20} and result["errors"] == 0, result
    assert 0 <= result["peak_held"] <= 20
    assert result["rss_peak_mib"] >= result["rss_idle_mib"] > 0
    assert result["last_wait_s"] > 0 and result["drain_s"] >= 0
    assert "| 20 | 20 | none | 0 |" in report.hold_table(result)


def test_routes_scenario_measures_both_sizes(isolated: Path) -> None:
    result = routes.run(instances=20, seconds=1, rounds=1, warmup=0)
    assert result["sizes"] == [1, 20]
    for size in ("1", "20"):
        r = result["by_size"][size]
        assert r["start_to_ready_s"] > 0 and r["rss_mib"] > 0, r
        # The applied instance got its route.
        assert r["route_visible_s"] >= r["apply_s"] > 0, r
        if find_tool("wrk"):
            assert r["rps"] > 0, r
    if find_tool("wrk"):
        assert result["by_size"]["1"]["vs_1_instance"] == 1.0
    assert "| 20 |" in report.routes_table(result)


def test_routes_config_has_the_instances_asked_for(tmp_path: Path) -> None:
    config = routes.config(tmp_path, 20)
    placed = sum(len(s["environments"]) for s in config["services"].values())
    assert placed == 20
    assert config["services"]["be"]["environments"] == ["staging"]


def test_sleep_accuracy_sees_each_run_go_to_sleep(isolated: Path) -> None:
    result = sleep_accuracy.run(runs=2, idle_timeout=0.3)
    decided, stopped = result["stopping_after_idle_timeout"], result["stopped_after_idle_timeout"]
    assert decided["n"] == stopped["n"] == 2
    # Each run saw "stopping" (or already "sleeping") before "sleeping".
    assert stopped["p50_ms"] >= decided["p50_ms"] and stopped["max_ms"] >= decided["max_ms"]
    assert "idle → sleeping" in report.sleep_table(result)


def test_autoscale_scenario_reports_replicas_over_time_and_the_figures(isolated: Path) -> None:
    settings = autoscale.Settings(concurrency=2, seconds=(1.0, 1.5, 1.5), connections=64)
    result = autoscale.run(settings)
    capacity = settings.capacity  # 100 req/s: 50, 400, 50 in the three phases
    assert [p["requests"] for p in result["phases"]] == [50, 600, 75], result["phases"]
    assert result["scheduled"] == 725
    rows = result["seconds"]
    assert [r["t_s"] for r in rows] == [0, 1, 2, 3] and sum(r["offered"] for r in rows) == 725
    assert rows[0]["phase"] == "low" and rows[1]["offered"] == 4 * capacity, rows
    # Every request was answered or counted as unanswered, in its second and its phase.
    unanswered = sum(r["client_errors"] for r in rows)
    assert result["answered"] + unanswered == 725, result["non_2xx"]
    assert sum(p["failed"] for p in result["phases"]) == result["non_2xx"]["count"]
    assert result["status_reads"] > 0
    for row in rows:  # the staging instance is always on, within 1..max_replicas
        assert row["ready"] is not None and 1 <= row["ready"] <= settings.max_replicas, row
        assert row["desired"] is None or 1 <= row["desired"] <= settings.max_replicas, row
    figures = result["figures"]
    assert figures["failed_during_scale_up"] == result["phases"][1]["failed"]
    assert figures["failed_during_scale_down"] == result["phases"][2]["failed"]
    assert figures["replicas_needed"] == 4 and figures["replicas_before_step"] >= 1
    assert 600 - unanswered <= figures["step_latency"]["n"] <= 600
    for name in ("step_to_enough_ready_s", "drop_to_extra_replicas_gone_s"):
        assert figures[name] is None or figures[name] >= 0, figures
    table = report.autoscale_table(result)
    assert "load step → 4 replicas ready" in table and "| 0 | low | 50 |" in table
    assert "requests failed during scale-down" in table
    assert "autoscale: 0 requests failed" in report.render({"autoscale": result})


def test_report_renders_goals_and_skips() -> None:
    results = {
        "warm": {"scenario": "warm", "status": "skipped", "reason": "wrk is not installed"},
        "hold": {"scenario": "hold", "status": "ok", "connections": 10, "answered_200": 9,
                 "statuses": {"200": 9, "504": 1}, "errors": 0, "peak_held": 10,
                 "last_wait_s": 1.0, "drain_s": 0.1, "rss_idle_mib": 40.0,
                 "rss_peak_mib": 50.0, "rss_over_idle_mib": 10.0, "start_delay_s": 1.0,
                 "hold_queue_size": 110, "nofile": 1024},
    }
    text = report.render(results)
    assert "skipped: wrk is not installed" in text
    assert "| 10 held requests all answered 200 | 9 | **no** |" in text
    assert "504: 1" in text
