"""Route table scale: wakegate with 1 instance and with 10,000.

Both configs have the always-on staging instance `be` (the fast backend);
the large one adds 9,999 sleeping demo instances that are never started.
Both wakegates run at once, so their warm-path rounds (wrk, like the warm
scenario) interleave. Per size:

- start → ready: from spawning `wakegate up` to its "Press Ctrl-C" line
  (config read and validated, route table built, `be` started and ready);
- wakegate's resident memory once started (controller + proxy, one process);
- `wakegate apply` of the config plus one new instance: the command's time,
  and the time until the proxy routes the new host (it answers 503 `sleeping`
  to an ignored path instead of 404 `no_route`, without waking it);
- warm-path throughput to `be`, and its ratio to the 1-instance wakegate.

Usage: python -m bench.routes [--instances 10000] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bench.coldstart import Wakegate
from bench.targets import HOST, backend_service
from bench.tools import (
    REPO,
    find_tool,
    http_get,
    median,
    raise_nofile,
    rss_kib,
    run_wrk,
    wakegate,
    workdir,
    write_result,
)

SCENARIO = "routes"
NEW_SERVICE = "added"


def config(folder: Path, instances: int) -> dict[str, Any]:
    """`be` always on, and instances - 1 sleeping demo services sharing one definition."""
    be = {**backend_service(folder), "environments": ["staging"]}
    # One object for every sleeper: the YAML then holds it once, behind an anchor.
    sleeper = {"command": "{python} -c pass", "environments": ["demo"],
               "activity": {"ignore_paths": ["/healthz"]}}
    services: dict[str, Any] = {"be": be}
    services.update({f"s{i:05d}": sleeper for i in range(1, instances)})
    return {"environments": {"demo": {}, "staging": {}}, "services": services}


def _apply(wg: Wakegate, folder: Path) -> tuple[float, float]:
    """(seconds `wakegate apply` took, seconds until the proxy routes the new host)."""
    path = folder / "wakegate.yaml"
    data = yaml.safe_load(path.read_text())
    data["services"][NEW_SERVICE] = copy.deepcopy(data["services"].get("s00001") or {
        "command": "{python} -c pass", "environments": ["demo"],
        "activity": {"ignore_paths": ["/healthz"]}})
    # The controller re-reads its own file: the edit goes there.
    path.write_text(yaml.safe_dump(data))
    host = f"{NEW_SERVICE}.demo.localhost"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "controller.cli", "apply", "-c", str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    took = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"wakegate apply failed ({done.returncode}): {done.stderr.strip()}")
    while http_get(wg.proxy_port, host, "/healthz")[0] == 404:
        if time.perf_counter() - started > 120:
            raise TimeoutError("the applied instance never got a route")
        time.sleep(0.005)
    return took, time.perf_counter() - started


def run(instances: int = 10000, seconds: float = 5.0, rounds: int = 3,
        warmup: float = 2.0, connections: int = 64) -> dict[str, Any]:
    raise_nofile(4 * connections + 1024)
    sizes = [1, instances]
    by_size: dict[str, dict[str, Any]] = {}
    with workdir(SCENARIO) as tmp, contextlib.ExitStack() as stack:
        running = {}
        for size in sizes:
            folder = tmp / f"n{size}"
            started = time.perf_counter()
            wg = stack.enter_context(wakegate(folder, config(folder, size)))
            ready = time.perf_counter() - started
            http_get(wg.proxy_port, HOST)
            time.sleep(1.0)  # let it settle before its memory is read
            by_size[str(size)] = {"start_to_ready_s": round(ready, 3),
                                  "rss_mib": round(rss_kib(wg.proc.pid) / 1024, 1)}
            running[size] = wg
        if find_tool("wrk") is not None:
            for size in sizes if warmup > 0 else []:
                run_wrk(f"http://127.0.0.1:{running[size].proxy_port}/", HOST, warmup,
                        connections)
            rps: dict[int, list[float]] = {size: [] for size in sizes}
            for round_ in range(rounds):
                for size in (sizes if round_ % 2 == 0 else sizes[::-1]):
                    url = f"http://127.0.0.1:{running[size].proxy_port}/"
                    rps[size].append(run_wrk(url, HOST, seconds, connections)["rps"])
            for size in sizes:
                by_size[str(size)]["rps"] = round(median(rps[size]), 1)
                by_size[str(size)]["rounds_rps"] = rps[size]
                by_size[str(size)]["vs_1_instance"] = round(
                    median(rps[size]) / median(rps[1]), 3)
        # After the throughput runs: apply changes the table of a running wakegate.
        for size in sizes:
            took, visible = _apply(running[size], tmp / f"n{size}")
            by_size[str(size)]["apply_s"] = round(took, 3)
            by_size[str(size)]["route_visible_s"] = round(visible, 3)
    return {"scenario": SCENARIO, "status": "ok", "sizes": sizes, "by_size": by_size,
            "wrk": None if find_tool("wrk") is None else
            {"seconds": seconds, "rounds": rounds, "connections": connections}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=10000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per wrk round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    result = run(args.instances, args.seconds, args.rounds)
    write_result(result)
    from bench.report import routes_table

    print(routes_table(result))


if __name__ == "__main__":
    main()
