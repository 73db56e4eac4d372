"""Cold start: what wakegate adds on top of the service's own start-to-ready time.

Two measurements of the example service, interleaved run by run:

- direct: spawn the process exactly as the local runtime does and poll its
  readiness path (2 ms apart) until it answers 200: the service's own
  start-to-ready time;
- through wakegate: one request to the sleeping instance, timed from send to
  the first response byte; between runs the instance goes back to sleep
  (idle_timeout 100ms) and the next run waits until the controller says so.

Usage: python -m bench.coldstart [--runs 30] [--json bench/results/coldstart.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import yaml

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "examples" / "hello" / "app.py"
HOST = "hello.demo.localhost"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _until_ready(port: int, deadline: float) -> None:
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("the service did not become ready")
            await asyncio.sleep(0.002)


async def direct_start() -> float:
    """Seconds from spawn to the first 200 on /healthz."""
    port = _free_port()
    env = {**os.environ, "PORT": str(port), "WAKEGATE_VERSION": "bench"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(HELLO)], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await _until_ready(port, time.monotonic() + 30)
        return time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


class Wakegate:
    def __init__(self, workdir: Path, overrides: dict[str, Any] | None = None,
                 args: Sequence[str] = ()) -> None:
        self.proxy_port, self.api_port = _free_port(), _free_port()
        config = {
            "state_dir": str(workdir / "state"),
            "listen": {"proxy": f"127.0.0.1:{self.proxy_port}",
                       "controller": f"127.0.0.1:{self.api_port}"},
            "environments": {"demo": {"idle_timeout": "100ms"}},
            "services": {"hello": {"command": f"{{python}} {HELLO}", "version": "bench",
                                   "readiness": {"http": "/healthz"},
                                   "environments": ["demo"], "stop_grace": "2s"}},
        }
        config.update(overrides or {})
        self.state_dir = Path(str(config["state_dir"]))
        path = workdir / "wakegate.yaml"
        path.write_text(yaml.safe_dump(config))
        # Kept in a file, so that a refused start (e.g. an option this version
        # does not have) can say why.
        self.stderr_path = workdir / "wakegate.stderr"
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "up", "-c", str(path),
                 "--log-level", "warning", *args],
                cwd=REPO, stdout=subprocess.PIPE, stderr=err, text=True,
                stdin=subprocess.DEVNULL,
            )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the banner ends with this line
            if line.startswith("Press Ctrl-C"):
                break
        else:
            code = self.proc.wait(30)
            raise RuntimeError(f"wakegate did not start (exit {code}): "
                               f"{self.stderr_path.read_text().strip()[-2000:]}")

    @property
    def token(self) -> str:
        """The controller API's token, made by wakegate at its first start."""
        return (self.state_dir / "api-token").read_text().strip()

    def state(self) -> str:
        request = urllib.request.Request(f"http://127.0.0.1:{self.api_port}/v1/status",
                                         headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=5) as resp:
            return str(json.loads(resp.read())["instances"][0]["state"])

    async def wait_asleep(self) -> None:
        deadline = time.monotonic() + 30
        while self.state() != "sleeping":
            if time.monotonic() > deadline:
                raise TimeoutError("the instance did not go to sleep")
            await asyncio.sleep(0.02)

    async def cold_request(self, http: aiohttp.ClientSession) -> tuple[float, float]:
        """(seconds to the first response byte, the proxy's Server-Timing coldstart seconds)."""
        t0 = time.perf_counter()
        async with http.get(f"http://127.0.0.1:{self.proxy_port}/",
                            headers={"Host": HOST}) as r:
            await r.content.readany()
            elapsed = time.perf_counter() - t0
            assert r.status == 200, r.status
            timing = r.headers.get("Server-Timing", "")
            assert r.headers.get("X-Wakegate-Cold-Start") == "true", "not a cold start"
        return elapsed, float(timing.split("dur=")[1]) / 1000

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def _summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 2),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 2),
        "min_ms": round(ordered[0] * 1000, 2),
        "max_ms": round(ordered[-1] * 1000, 2),
    }


async def run(runs: int) -> dict[str, Any]:
    direct: list[float] = []
    through: list[float] = []
    server_timing: list[float] = []
    with tempfile.TemporaryDirectory(prefix="wakegate-bench-") as tmp:
        wg = Wakegate(Path(tmp))
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(runs):
                    direct.append(await direct_start())
                    await wg.wait_asleep()
                    elapsed, timing = await wg.cold_request(http)
                    through.append(elapsed)
                    server_timing.append(timing)
        finally:
            wg.close()
    d, w = _summary(direct), _summary(through)
    return {
        "scenario": "coldstart",
        "service_start_to_ready": d,
        "through_wakegate_first_byte": w,
        "proxy_server_timing": _summary(server_timing),
        "overhead_p50_ms": round(w["p50_ms"] - d["p50_ms"], 2),
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
    }


def markdown(result: dict[str, Any]) -> str:
    rows = [("service's own start-to-ready (direct)", result["service_start_to_ready"]),
            ("cold request through wakegate (first byte)", result["through_wakegate_first_byte"]),
            ("proxy's Server-Timing coldstart", result["proxy_server_timing"])]
    out = ["| cold start | n | p50 ms | p90 ms | min ms | max ms |", "|---|---|---|---|---|---|"]
    for name, s in rows:
        out.append(f"| {name} | {s['n']} | {s['p50_ms']} | {s['p90_ms']} | {s['min_ms']} | "
                   f"{s['max_ms']} |")
    out.append(f"\nwakegate's overhead at p50: {result['overhead_p50_ms']} ms")
    return "\n".join(out)


def report(result: dict[str, Any], json_path: str | None, table: str) -> None:
    """Write the result as JSON (when asked) and print its markdown table."""
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", help="write the result to this file")
    args = parser.parse_args()
    result = asyncio.run(run(args.runs))
    report(result, args.json, markdown(result))


if __name__ == "__main__":
    main()
