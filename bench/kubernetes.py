"""The Kubernetes path in the fake cluster: cold starts and leader failover.

- cold start: a request to a sleeping instance whose Deployment is at 0, timed
  from send to the first response byte. It contains the fake kubelet's
  simulated start delay and the service process's own start-to-ready time
  (measured directly, interleaved run by run); what is left is wakegate's
  Kubernetes path: the scale call, the EndpointSlice watch, the route table
  and forwarding.
- failover: two controllers; the leader is SIGKILLed (so it cannot release
  its Lease) and the standby's time to take over is measured. With a lease
  of 1 s it cannot be under ~1 s: the Lease must expire first.

Usage: python -m bench.kubernetes [--runs 30] [--failovers 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench.coldstart import REPO, Wakegate, _free_port, _summary, direct_start, report
from tests.kube_cluster import Cluster

START_DELAY = 0.1


def _kube_settings(cluster: Cluster) -> dict[str, Any]:
    return {
        "runtime": "kubernetes",
        "kubernetes": cluster.settings(),
        "environments": {"demo": {"idle_timeout": "100ms"}},
        "services": {},
    }


async def cold_starts(runs: int, workdir: Path) -> dict[str, Any]:
    cluster = Cluster(workdir / "kube", start_delay=START_DELAY)
    direct: list[float] = []
    through: list[float] = []
    try:
        cluster.environment("hello-demo", "demo", "demo")
        cluster.service("hello-demo", "hello", version="bench")
        wg = Wakegate(workdir, _kube_settings(cluster))
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(runs):
                    direct.append(await direct_start())
                    await wg.wait_asleep()
                    elapsed, _ = await wg.cold_request(http)
                    through.append(elapsed)
        finally:
            wg.close()
    finally:
        cluster.close()
    overhead = [t - START_DELAY - d for t, d in zip(through, direct, strict=True)]
    return {
        "simulated_start_delay_ms": START_DELAY * 1000,
        "service_start_to_ready": _summary(direct),
        "through_wakegate_first_byte": _summary(through),
        "kubernetes_path_overhead_p50_ms": round(statistics.median(overhead) * 1000, 2),
    }


def _start_controller(workdir: Path, name: str, cluster: Cluster) -> subprocess.Popen[str]:
    config = {
        **_kube_settings(cluster),
        "state_dir": str(workdir / name / "state"),
        "listen": {"proxy": f"127.0.0.1:{_free_port()}",
                   "controller": f"127.0.0.1:{_free_port()}"},
    }
    (workdir / name).mkdir(parents=True, exist_ok=True)
    path = workdir / name / "wakegate.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "up", "-c", str(path)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _watch_output(proc: subprocess.Popen[str], waiting: threading.Event,
                  leading: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if "waits to become the leader" in line:
            waiting.set()
        if line.startswith("Press Ctrl-C"):
            leading.set()


def _controller(
    workdir: Path, name: str, cluster: Cluster, procs: list[subprocess.Popen[str]]
) -> tuple[subprocess.Popen[str], threading.Event, threading.Event]:
    """A started controller and the events: waiting for the Lease, leading."""
    proc = _start_controller(workdir, name, cluster)
    procs.append(proc)
    waiting, leading = threading.Event(), threading.Event()
    threading.Thread(target=_watch_output, args=(proc, waiting, leading), daemon=True).start()
    return proc, waiting, leading


def failovers(count: int, workdir: Path) -> dict[str, Any]:
    cluster = Cluster(workdir / "kube-failover")
    times: list[float] = []
    procs: list[subprocess.Popen[str]] = []
    try:
        cluster.environment("hello-demo", "demo", "demo")
        cluster.service("hello-demo", "hello", version="bench")
        leader, _, leading = _controller(workdir, "c0", cluster, procs)
        if not leading.wait(30):
            raise RuntimeError("the first controller did not lead")
        for i in range(count):
            standby, waiting, leading = _controller(workdir, f"c{i + 1}", cluster, procs)
            if not waiting.wait(30):
                raise RuntimeError("the standby did not wait for the lease")
            killed = time.perf_counter()
            leader.send_signal(signal.SIGKILL)
            leader.wait(10)
            if not leading.wait(30):
                raise RuntimeError("the standby did not take over")
            times.append(time.perf_counter() - killed)
            leader = standby
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(15)
        cluster.close()
    return {"lease_duration_ms": 1000, "takeover": _summary(times)}


async def run(runs: int, failover_count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="wakegate-bench-kube-") as tmp:
        result = {"scenario": "kubernetes",
                  "coldstart": await cold_starts(runs, Path(tmp)),
                  "failover": await asyncio.to_thread(failovers, failover_count, Path(tmp)),
                  "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}}
    return result


def markdown(result: dict[str, Any]) -> str:
    c, f = result["coldstart"], result["failover"]
    rows = [("service's own start-to-ready (direct)", c["service_start_to_ready"]),
            ("cold request via Kubernetes runtime (first byte)",
             c["through_wakegate_first_byte"]),
            ("leader failover after SIGKILL (lease 1 s)", f["takeover"])]
    out = ["| kubernetes (fake cluster) | n | p50 ms | p90 ms | min ms | max ms |",
           "|---|---|---|---|---|---|"]
    for name, s in rows:
        out.append(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {s['min_ms']} | "
                   f"{s['max_ms']} |")
    out.append(f"\nsimulated start delay {c['simulated_start_delay_ms']:g} ms; the Kubernetes "
               f"path adds {c['kubernetes_path_overhead_p50_ms']} ms at p50 beyond it and the "
               "service's own start")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--failovers", type=int, default=5)
    parser.add_argument("--json", help="write the result to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args.runs, args.failovers))
    report(result, args.json, markdown(result))


if __name__ == "__main__":
    main()
