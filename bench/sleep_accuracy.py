"""Sleep accuracy: how long after idle_timeout an idle instance is actually stopped.

Each run wakes the instance with one request, notes when its response ended,
then reads the controller's /v1/status every few milliseconds: the first
reading that is no longer `ready` is the decision (`stopping`), the first
`sleeping` means its process has been stopped. Both are reported as the time
past idle_timeout. A negative figure would be a bug: asleep too early.

Usage: python -m bench.sleep_accuracy [--runs 10] [--idle-timeout 1]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.coldstart import Wakegate
from bench.targets import backend_service
from bench.tools import api, http_get, latency_summary, wakegate, workdir, write_result

SCENARIO = "sleep_accuracy"
HOST = "be.demo.localhost"
POLL = 0.005


def _state(wg: Wakegate) -> str:
    return str(api(wg, "/v1/status")["instances"][0]["state"])


def _until(wg: Wakegate, done: Any, timeout: float) -> tuple[float, str]:
    deadline = time.monotonic() + timeout
    while True:
        state = _state(wg)
        now = time.monotonic()
        if done(state):
            return now, state
        if now > deadline:
            raise TimeoutError(f"the instance stayed {state}")
        time.sleep(POLL)


def run(runs: int = 10, idle_timeout: float = 1.0) -> dict[str, Any]:
    stopping: list[float] = []
    stopped: list[float] = []
    with workdir(SCENARIO) as tmp:
        config = {"environments": {"demo": {"idle_timeout": f"{idle_timeout:g}s"}},
                  "services": {"be": {**backend_service(tmp), "environments": ["demo"]}}}
        with wakegate(tmp / "wakegate", config) as wg:
            for _ in range(runs):
                _until(wg, lambda s: s == "sleeping", 60)
                status, _ = http_get(wg.proxy_port, HOST)
                ended = time.monotonic()
                if status != 200:
                    raise RuntimeError(f"the wake-up request got {status}")
                decided, _ = _until(wg, lambda s: s != "ready", idle_timeout + 60)
                asleep, _ = _until(wg, lambda s: s == "sleeping", 60)
                stopping.append(decided - ended - idle_timeout)
                stopped.append(asleep - ended - idle_timeout)
    return {
        "scenario": SCENARIO,
        "status": "ok",
        "runs": runs,
        "idle_timeout_s": idle_timeout,
        "poll_ms": POLL * 1000,
        "stopping_after_idle_timeout": _summary(stopping),
        "stopped_after_idle_timeout": _summary(stopped),
        "early_runs": sum(1 for late in stopping if late < 0),
    }


def _summary(seconds: list[float]) -> dict[str, Any]:
    s = latency_summary(seconds)
    return {"n": s["n"], "p50_ms": s["p50_ms"], "max_ms": s["max_ms"],
            "min_ms": round(min(seconds) * 1000, 3) if seconds else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle-timeout", type=float, default=1.0, metavar="SECONDS")
    args = parser.parse_args()
    result = run(args.runs, args.idle_timeout)
    write_result(result)
    from bench.report import sleep_table

    print(sleep_table(result))


if __name__ == "__main__":
    main()
