"""Warm path: the same fast backend reached directly, through wakegate, nginx and HAProxy.

- closed loop (wrk, keep-alive, 64 connections): maximum throughput. Every
  target is warmed up first, then measured in rounds that visit the targets
  in a rotated order, so a slow drift of the machine hits all of them alike;
  the median round counts. Around each wrk run the CPU time (utime + stime)
  of the target's proxying processes alone is read from /proc (bench/cpu.py):
  CPU µs per request, a figure that the machine's noise hardly moves.
- open loop (bench/openloop.py) at a fixed rate every target sustains:
  p50/p99/p99.9 from each request's scheduled send time, in interleaved
  rounds too. The generator is first checked against the direct target; if
  one process cannot keep the rate it uses two, and says so.

Every proxy runs 1 worker; wakegate also with each count of --wakegate-workers
that its CLI accepts (a refused count is reported, not fatal), and with 1
worker twice more: request log off, and WAKEGATE_FAST_PATH=0 (aiohttp both
ways). Two Python reference points: a bare uvloop byte pipe (bench/pipe.py, the
floor of any Python proxy) and uvloop + httptools (bench/httptools_proxy.py,
what a Python proxy parsing with llhttp can reach). Caddy if it is installed.
A missing tool skips its target (wrk: the closed loop) and says why.

Usage: python -m bench.warm [--seconds 5] [--rounds 3] [--rate 1000]
           [--openloop-seconds 6] [--openloop-rounds 2] [--wakegate-workers 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import cpu, openloop, targets
from bench.targets import HOST, Target
from bench.tools import Skip, find_tool, median, raise_nofile, run_wrk, workdir, write_result

SCENARIO = "warm"
# Issue 12's bar for wakegate 1 worker against nginx 1 worker, and the goal beyond it.
BAR = {"rps_ratio_min": 0.6, "cpu_ratio_max": 1.6, "added_p50_max_ms": 0.5}
GOAL = {"rps_ratio_min": 0.8, "cpu_ratio_max": 1.2}
CPU_METHOD = (
    "utime + stime (fields 14 and 15 of /proc/<pid>/stat, clock ticks of 1/{hz} s) of the "
    "processes in each target's cpu_counted, read before and after each wrk run, summed, "
    "divided by the requests that run got answered; median over rounds. Not counted: their "
    "children's cutime/cstime, the backend (cpu_not_counted lists children left out), wrk.")


def _start_all(stack: contextlib.ExitStack, workdir: Path, workers: list[int],
               skipped: dict[str, str]) -> list[Target]:
    direct = targets.start_backend(stack, workdir)
    up = direct.port
    starts: list[tuple[str, Callable[[], Target]]] = [
        ("nginx", lambda: targets.start_nginx_proxy(stack, workdir, up)),
        ("haproxy", lambda: targets.start_haproxy(stack, workdir, up)),
        ("caddy", lambda: targets.start_caddy(stack, workdir, up)),
        ("pipe", lambda: targets.start_python_proxy(
            stack, workdir, "pipe", "bench.pipe", up,
            "bare uvloop byte pipe, no parsing: the floor of a Python proxy")),
        ("httptools", lambda: targets.start_python_proxy(
            stack, workdir, "httptools", "bench.httptools_proxy", up,
            "uvloop + httptools, heads rewritten, pooled upstream: the llhttp ceiling")),
    ]
    starts += [(f"wakegate-w{n}", lambda n=n: targets.start_wakegate(stack, workdir, n))
               for n in workers]
    starts += [
        ("wakegate-w1-nolog", lambda: targets.start_wakegate(
            stack, workdir, 1, name="wakegate-w1-nolog", args=["--request-log", "off"],
            note="1 worker, --request-log off")),
        ("wakegate-w1-aiohttp", lambda: targets.start_wakegate(
            stack, workdir, 1, name="wakegate-w1-aiohttp", env={"WAKEGATE_FAST_PATH": "0"},
            note="1 worker, WAKEGATE_FAST_PATH=0: aiohttp both ways")),
    ]
    found = [direct]
    for name, start in starts:
        try:
            found.append(start())
        except Skip as exc:
            skipped[name] = str(exc)
    return found


def _rotated(items: list[Target], by: int) -> list[Target]:
    by %= len(items)
    return items[by:] + items[:by]


def _measured_wrk(target: Target, seconds: float, connections: int,
                  threads: int) -> dict[str, Any]:
    """One wrk run, with the CPU time the target's proxying processes spent on it."""
    counted = target.counted()
    before = cpu.snapshot(counted)
    result = run_wrk(f"http://127.0.0.1:{target.port}/", HOST, seconds, connections, threads)
    after = cpu.snapshot(counted)
    spent = cpu.seconds_between(before, after)
    requests = result.get("requests") or 0
    return {**result, "cpu_s": round(spent, 3),
            "cpu_s_by_pid": {str(pid): round((after[pid] - ticks) / cpu.CLK_TCK, 3)
                             for pid, ticks in before.items()},
            "cpu_us_per_request": round(spent * 1e6 / requests, 2) if requests else None}


def _closed_loop(found: list[Target], seconds: float, rounds: int, warmup: float,
                 connections: int, threads: int) -> dict[str, dict[str, Any]]:
    for target in found if warmup > 0 else []:
        run_wrk(f"http://127.0.0.1:{target.port}/", HOST, warmup, connections, threads)
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in found}
    for round_ in range(rounds):
        for target in _rotated(found, round_):
            runs[target.name].append(_measured_wrk(target, seconds, connections, threads))
    out = {}
    for name, results in runs.items():
        # The round with the median throughput, whole, so its figures belong together;
        # CPU per request is the median of its own over the rounds.
        ordered = sorted(results, key=lambda r: r["rps"])
        mid = ordered[(len(ordered) - 1) // 2]
        per_request = [r["cpu_us_per_request"] for r in results
                       if r["cpu_us_per_request"] is not None]
        out[name] = {**mid, "rps": round(median([r["rps"] for r in results]), 1),
                     "rounds_rps": [r["rps"] for r in results],
                     "cpu_us_per_request": round(median(per_request), 2) if per_request else None,
                     "rounds_cpu_us_per_request": [r["cpu_us_per_request"] for r in results],
                     "errors": sum(r["errors"] + r["non_2xx"] for r in results)}
    return out


def _generator_processes(direct: Target, rate: float, seconds: float,
                         connections: int) -> tuple[int, dict[str, Any]]:
    """How many generator processes keep `rate` against the direct target (1 or 2)."""
    checks = {}
    for processes in (1, 2):
        result = openloop.run(direct.port, HOST, rate, seconds, connections, processes)
        checks[processes] = {"sustained": openloop.sustained(result),
                             "achieved_rps": result["achieved_rps"],
                             "send_lag": result["send_lag"]}
        if checks[processes]["sustained"]:
            return processes, {"processes": processes, "checks": checks}
    return 2, {"processes": 2, "checks": checks,
               "note": "the generator could not keep the rate even against the direct target; "
                       "its figures include its own lateness (see send_lag)"}


def _open_loop(found: list[Target], rate: float, seconds: float, rounds: int,
               connections: int, processes: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in found}
    for round_ in range(rounds):
        for target in _rotated(found, round_):
            runs[target.name].append(
                openloop.run(target.port, HOST, rate, seconds, connections, processes))
    out = {}
    for name, results in runs.items():
        # Per percentile, the median over rounds.
        out[name] = {
            "rate": rate,
            "scheduled": sum(r["scheduled"] for r in results),
            "completed": sum(r["completed"] for r in results),
            "errors": sum(r["errors"] for r in results),
            "statuses": dict(sum((Counter(r["statuses"]) for r in results), Counter())),
            "achieved_rps": round(median([r["achieved_rps"] for r in results]), 1),
            **{f"{kind}_{q}": round(median([r[kind][q] for r in results]), 3)
               for kind in ("latency", "service_latency")
               for q in ("p50_ms", "p99_ms", "p999_ms", "max_ms")},
            "send_lag_p99_ms": round(median([r["send_lag"]["p99_ms"] for r in results]), 3),
        }
    return out


def _ratios(closed: dict[str, dict[str, Any]], opened: dict[str, dict[str, Any]]
            ) -> dict[str, Any]:
    ratios: dict[str, Any] = {}
    cpu_ratios: dict[str, Any] = {}
    for name in closed:
        for base in ("nginx", "haproxy", "direct"):
            if name != base and base in closed and closed[base]["rps"]:
                ratios[f"{name}/{base}"] = round(closed[name]["rps"] / closed[base]["rps"], 3)
        for base in ("nginx", "haproxy"):
            mine, theirs = (closed[n].get("cpu_us_per_request") if n in closed else None
                            for n in (name, base))
            if name != base and mine is not None and theirs:
                cpu_ratios[f"{name}/{base}"] = round(mine / theirs, 3)
    added = {name: round(o["latency_p50_ms"] - opened["direct"]["latency_p50_ms"], 3)
             for name, o in opened.items() if name != "direct" and "direct" in opened}
    return {"throughput": ratios, "cpu_per_request": cpu_ratios, "added_p50_ms": added}


def bar(ratios: dict[str, Any], target: str = "wakegate-w1") -> dict[str, Any]:
    """Issue 12's bar: `target` against nginx (1 worker each), and whether each part passes.

    A figure that could not be measured (a tool missing) passes nothing: None.
    """
    rps = ratios["throughput"].get(f"{target}/nginx")
    per_request = ratios["cpu_per_request"].get(f"{target}/nginx")
    added = ratios["added_p50_ms"].get(target)
    out: dict[str, Any] = {
        "target": target, "versus": "nginx",
        "rps_ratio": rps, "rps_ratio_min": BAR["rps_ratio_min"],
        "rps_pass": None if rps is None else rps >= BAR["rps_ratio_min"],
        "cpu_ratio": per_request, "cpu_ratio_max": BAR["cpu_ratio_max"],
        "cpu_pass": None if per_request is None else per_request <= BAR["cpu_ratio_max"],
        "added_p50_ms": added, "added_p50_max_ms": BAR["added_p50_max_ms"],
        "added_p50_pass": None if added is None else added <= BAR["added_p50_max_ms"],
        "goal": {**GOAL,
                 "rps_met": None if rps is None else rps >= GOAL["rps_ratio_min"],
                 "cpu_met": None if per_request is None
                 else per_request <= GOAL["cpu_ratio_max"]},
    }
    parts = [out["rps_pass"], out["cpu_pass"], out["added_p50_pass"]]
    out["pass"] = None if None in parts else all(parts)
    return out


def run(workers: list[int] | None = None, seconds: float = 5.0, rounds: int = 3,
        warmup: float = 2.0, connections: int = 64, threads: int = 1, rate: float = 1000.0,
        openloop_seconds: float = 6.0, openloop_rounds: int = 2,
        openloop_connections: int = 32) -> dict[str, Any]:
    raise_nofile(4 * connections + 1024)
    skipped: dict[str, str] = {}
    result: dict[str, Any] = {"scenario": SCENARIO, "status": "ok", "host": HOST,
                              "settings": {"wrk_seconds": seconds, "rounds": rounds,
                                           "warmup_seconds": warmup, "connections": connections,
                                           "wrk_threads": threads, "rate": rate,
                                           "openloop_seconds": openloop_seconds,
                                           "openloop_rounds": openloop_rounds,
                                           "openloop_connections": openloop_connections}}
    result["cpu_method"] = CPU_METHOD.format(hz=cpu.CLK_TCK)
    with workdir(SCENARIO) as tmp, contextlib.ExitStack() as stack:
        found = _start_all(stack, tmp, workers or [1], skipped)
        result["targets"] = {t.name: {"note": t.note} for t in found}
        for t in found:  # what each counts, as it is before any load
            counted = t.counted()
            result["targets"][t.name]["cpu_counted"] = [c.describe() for c in counted]
            result["targets"][t.name]["cpu_not_counted"] = [
                c.describe() for c in cpu.left_out(counted)]
        if find_tool("wrk") is None:
            skipped["closed loop"] = "wrk is not installed"
            closed: dict[str, dict[str, Any]] = {}
        else:
            closed = _closed_loop(found, seconds, rounds, warmup, connections, threads)
        processes, result["generator"] = _generator_processes(
            found[0], rate, min(openloop_seconds, 3.0), openloop_connections)
        opened = _open_loop(found, rate, openloop_seconds, openloop_rounds,
                            openloop_connections, processes)
    for name in result["targets"]:
        result["targets"][name]["closed_loop"] = closed.get(name)
        result["targets"][name]["open_loop"] = opened.get(name)
    result["ratios"] = _ratios(closed, opened)
    result["bar"] = bar(result["ratios"])
    result["skipped"] = skipped
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s")
    parser.add_argument("--openloop-seconds", type=float, default=6.0)
    parser.add_argument("--openloop-rounds", type=int, default=2)
    parser.add_argument("--wakegate-workers", default="1",
                        help="comma-separated worker counts, e.g. 1,2")
    args = parser.parse_args()
    result = run([int(n) for n in args.wakegate_workers.split(",")], args.seconds, args.rounds,
                 args.warmup, args.connections, args.threads, args.rate, args.openloop_seconds,
                 args.openloop_rounds)
    write_result(result)
    from bench.report import warm_table

    print(warm_table(result))
    print(json.dumps(result["skipped"], indent=2))


if __name__ == "__main__":
    main()
