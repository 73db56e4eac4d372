"""Warm path: the same fast backend reached directly, through wakegate, nginx and HAProxy.

- closed loop (wrk, keep-alive, 64 connections): maximum throughput. Every
  target is warmed up first, then measured in rounds that visit the targets
  in a rotated order, so a slow drift of the machine hits all of them alike;
  the median round counts.
- open loop (bench/openloop.py) at a fixed rate every target sustains:
  p50/p99/p99.9 from each request's scheduled send time, in interleaved
  rounds too. The generator is first checked against the direct target; if
  one process cannot keep the rate it uses two, and says so.

Every proxy runs 1 worker; wakegate also with each count of --wakegate-workers
that its CLI accepts (a refused count is reported, not fatal). A missing tool
skips its target (wrk: the closed loop) and says why.

Usage: python -m bench.warm [--seconds 5] [--rounds 3] [--rate 1000]
           [--openloop-seconds 6] [--openloop-rounds 2] [--wakegate-workers 1,2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import openloop, targets
from bench.targets import HOST, Target
from bench.tools import Skip, find_tool, median, raise_nofile, run_wrk, workdir, write_result

SCENARIO = "warm"


def _start_all(stack: contextlib.ExitStack, workdir: Path, workers: list[int],
               skipped: dict[str, str]) -> list[Target]:
    direct = targets.start_backend(stack, workdir)
    starts: list[tuple[str, Callable[[], Target]]] = [
        ("nginx", lambda: targets.start_nginx_proxy(stack, workdir, direct.port)),
        ("haproxy", lambda: targets.start_haproxy(stack, workdir, direct.port)),
    ]
    starts += [(f"wakegate-w{n}", lambda n=n: targets.start_wakegate(stack, workdir, n))
               for n in workers]
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


def _closed_loop(found: list[Target], seconds: float, rounds: int, warmup: float,
                 connections: int, threads: int) -> dict[str, dict[str, Any]]:
    for target in found if warmup > 0 else []:
        run_wrk(f"http://127.0.0.1:{target.port}/", HOST, warmup, connections, threads)
    runs: dict[str, list[dict[str, Any]]] = {t.name: [] for t in found}
    for round_ in range(rounds):
        for target in _rotated(found, round_):
            runs[target.name].append(run_wrk(f"http://127.0.0.1:{target.port}/", HOST, seconds,
                                             connections, threads))
    out = {}
    for name, results in runs.items():
        # The round with the median throughput, whole, so its figures belong together.
        ordered = sorted(results, key=lambda r: r["rps"])
        mid = ordered[(len(ordered) - 1) // 2]
        out[name] = {**mid, "rps": round(median([r["rps"] for r in results]), 1),
                     "rounds_rps": [r["rps"] for r in results],
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
    for name in closed:
        for base in ("nginx", "haproxy", "direct"):
            if name != base and base in closed and closed[base]["rps"]:
                ratios[f"{name}/{base}"] = round(closed[name]["rps"] / closed[base]["rps"], 3)
    added = {name: round(o["latency_p50_ms"] - opened["direct"]["latency_p50_ms"], 3)
             for name, o in opened.items() if name != "direct" and "direct" in opened}
    return {"throughput": ratios, "added_p50_ms": added}


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
    with workdir(SCENARIO) as tmp, contextlib.ExitStack() as stack:
        found = _start_all(stack, tmp, workers or [1], skipped)
        result["targets"] = {t.name: {"note": t.note} for t in found}
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
