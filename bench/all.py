"""Every scenario in one run (what `make bench` runs), then the combined report.

A scenario whose tool is missing is written as skipped, with the reason; a
scenario that fails is written as failed and the others still run (the exit
status is then 1). Each result goes to bench/results/<name>.json; the report
to bench/results/summary.md.

Usage: python -m bench.all [--only warm,hold] [--quick] [--wakegate-workers 1,2] ...
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from bench import autoscale, coldstart, hold, report, routes, sleep_accuracy, warm
from bench.tools import RESULTS, Skip, skipped, write_result

ORDER = ("warm", "coldstart", "kubernetes", "hold", "routes", "sleep_accuracy", "autoscale")


def _scenarios(args: argparse.Namespace) -> dict[str, Callable[[], dict[str, Any]]]:
    def kube() -> dict[str, Any]:
        from bench import kubernetes  # it needs the test cluster of tests/kube

        return asyncio.run(kubernetes.run(args.cold_runs, args.failovers))

    workers = [int(n) for n in args.wakegate_workers.split(",")]
    return {
        "warm": lambda: warm.run(workers, args.seconds, args.rounds, rate=args.rate,
                                 openloop_seconds=args.openloop_seconds),
        "coldstart": lambda: asyncio.run(coldstart.run(args.cold_runs)),
        "kubernetes": kube,
        "hold": lambda: hold.run(args.hold_connections),
        "routes": lambda: routes.run(args.route_instances, args.seconds, args.rounds),
        "sleep_accuracy": lambda: sleep_accuracy.run(args.sleep_runs),
        "autoscale": lambda: autoscale.run(
            autoscale.Settings(seconds=autoscale.phase_seconds(args.autoscale_seconds))),
    }


def run_one(name: str, scenario: Callable[[], dict[str, Any]]) -> str:
    """Run, write its result, and say how it ended: ok, skipped or failed."""
    print(f"== {name}", file=sys.stderr, flush=True)
    load = os.getloadavg()
    started = time.monotonic()
    try:
        result = scenario()
    except Skip as exc:
        result = skipped(name, str(exc))
    except Exception as exc:
        traceback.print_exc()
        result = {"scenario": name, "status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    result.setdefault("scenario", name)
    # The machine may be busy with something else; the load says so.
    result["loadavg_before"] = [round(x, 2) for x in load]
    result["wall_s"] = round(time.monotonic() - started, 1)
    write_result(result)
    status = str(result.get("status", "ok"))
    print(f"== {name}: {status} in {result['wall_s']} s"
          + (f" ({result.get('reason')})" if status != "ok" else ""), file=sys.stderr, flush=True)
    return status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", help=f"comma-separated, from: {', '.join(ORDER)}")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and short runs: to try the harness, not to measure")
    parser.add_argument("--wakegate-workers", default="1,2")
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=1000.0, help="open-loop requests/s")
    parser.add_argument("--openloop-seconds", type=float, default=6.0)
    parser.add_argument("--cold-runs", type=int, default=30)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--hold-connections", type=int, default=10000)
    parser.add_argument("--route-instances", type=int, default=10000)
    parser.add_argument("--sleep-runs", type=int, default=10)
    parser.add_argument("--autoscale-seconds", default="10,20,40",
                        help="the autoscale load's phases: low, step, low again")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.openloop_seconds = 1.0, 1, 1.0
        args.cold_runs, args.failovers, args.hold_connections = 2, 1, 50
        args.route_instances, args.sleep_runs = 50, 2
        args.autoscale_seconds = "1,2,2"
    names = args.only.split(",") if args.only else list(ORDER)
    unknown = [n for n in names if n not in ORDER]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    scenarios = _scenarios(args)
    statuses = {name: run_one(name, scenarios[name]) for name in ORDER if name in names}
    text = report.render(report.load(RESULTS))
    (RESULTS / "summary.md").write_text(text + "\n")
    print(text)
    print(f"\n(written to {RESULTS}/)", file=sys.stderr)
    sys.exit(1 if "failed" in statuses.values() else 0)


if __name__ == "__main__":
    main()
