"""Worker processes: `--workers N` proxies sharing one port with SO_REUSEPORT.

`wakegate up --workers N` and `wakegate proxy --workers N`: the process is
worker 1, workers 2..N are `wakegate proxy` children it supervises. Real
processes on free loopback ports, real HTTP; every process is found and
stopped by its pid.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .client import Answer, fetch
from .conftest import (
    REPO,
    Split,
    Wakegate,
    hello_service,
    metric_value,
    process_env,
    stop_all,
    stop_process,
    wait_until,
)
from .procs import alive, cmdline, live_pids, processes_with, stat

DEMO, SERVICE = "demo", "hello"
HOST = f"{SERVICE}.{DEMO}.localhost"
REQUESTS = 15  # odd: two workers can never have served the same number
STOP_DEADLINE = 10.0


def demo_config(idle_timeout: str = "15m") -> dict[str, Any]:
    return {"environments": {DEMO: {"idle_timeout": idle_timeout}},
            "services": {SERVICE: hello_service(environments=[DEMO])}}


def workers_of(parent: int) -> list[int]:
    """Pids of the live worker children of `parent` (not the services it runs)."""
    return sorted(pid for pid in live_pids()
                  if (fields := stat(pid)) is not None and int(fields[1]) == parent
                  and b"--worker-index" in cmdline(pid))


def fresh_connections() -> aiohttp.ClientSession:
    """A session that opens a new connection per request, so the kernel picks a worker
    for each one."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=30),
        connector=aiohttp.TCPConnector(force_close=True, limit=0),
    )


async def concurrent_gets(base: str, n: int) -> list[Answer]:
    async with fresh_connections() as http:
        return list(await asyncio.gather(*(fetch(http, base, HOST) for _ in range(n))))


async def served_counts(base: str, scrapes: int = 40) -> set[float | None]:
    """wakegate_requests_total of demo/hello as seen by `scrapes` scrapes of /metrics, each on
    a new connection: one value per worker that answered a scrape (None: served none)."""
    seen: set[float | None] = set()
    async with fresh_connections() as http:
        for _ in range(scrapes):
            async with http.get(base + "/metrics") as r:
                text = await r.text()
            seen.add(metric_value(text, "wakegate_requests_total", environment=DEMO,
                                  service=SERVICE, code="200"))
    return seen


def proxies_listed(wg: Wakegate) -> list[dict[str, Any]]:
    return list(wg.api("/v1/proxies")["proxies"])


class UpWithWorkers(Wakegate):
    workers = 2

    def argv(self) -> list[str]:
        return [*super().argv(), "--workers", str(self.workers)]


@pytest.fixture
def up_workers(tmp_path: Path) -> Iterator[Callable[..., UpWithWorkers]]:
    """`wakegate up --workers N`; stopped by pid at the end, with everything it started."""
    started: list[UpWithWorkers] = []

    def start(config: dict[str, Any], workers: int = 2) -> UpWithWorkers:
        wg = UpWithWorkers(tmp_path, config, f"up{len(started)}")
        wg.workers = workers
        started.append(wg)
        return wg.start()

    yield start
    stop_all(started)


# --- the option ---


@pytest.mark.parametrize("argv", [
    ["up", "--workers", "0"], ["proxy", "--workers", "65"], ["up", "--workers", "two"],
    ["proxy", "--workers", "-1"],
])
def test_workers_must_be_a_number_from_1_to_64(argv: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "controller.cli", *argv], cwd=REPO,
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result
    assert "--workers" in result.stderr and "1 to 64" in result.stderr, result.stderr


# --- wakegate up --workers N ---


async def test_up_with_two_workers_serves_one_port_from_both(up_workers) -> None:
    wg = up_workers(demo_config(idle_timeout="1s"))
    assert wg.proc is not None
    children = workers_of(wg.proc.pid)
    assert len(children) == 1, children
    assert any(f"pid {wg.proc.pid} (this one) and {children[0]}" in line
               for line in wg.stdout), wg.stdout
    # Up means every worker is up: the child has the controller's current table.
    listed = proxies_listed(wg)
    assert [p["proxy"].split("/")[1] for p in listed] == [f"pid{children[0]}"], listed
    assert listed[0]["table"]["epoch"] == wg.api("/v1/proxies")["epoch"]

    # Held while the instance wakes, on whichever worker took the connection.
    answers = await concurrent_gets(wg.base, REQUESTS)
    assert all(a.status == 200 and a.cold for a in answers), answers
    assert len({a.body["pid"] for a in answers}) == 1, "one activation for all"
    per_worker = await served_counts(wg.base)
    assert len(per_worker) == 2 and None not in per_worker, per_worker
    assert sum(v for v in per_worker if v is not None) == REQUESTS, per_worker

    # The child reports its activity, and the controller still lets the instance sleep
    # (its drain waits for the child's report).
    wait_until(lambda: any(p["instances"] for p in proxies_listed(wg)), 5.0,
               "the worker to report its activity")
    wg.wait_state(DEMO, SERVICE, "sleeping", timeout=8.0)
    again = await concurrent_gets(wg.base, 3)
    assert all(a.status == 200 and a.cold for a in again), again


async def test_a_killed_worker_is_restarted_and_sigterm_stops_every_worker(up_workers) -> None:
    wg = up_workers(demo_config(), workers=3)
    assert wg.proc is not None
    first = workers_of(wg.proc.pid)
    assert len(first) == 2, first
    os.kill(first[0], signal.SIGKILL)

    def replaced() -> list[int] | None:
        now = workers_of(wg.proc.pid) if wg.proc else []
        return now if len(now) == 2 and first[0] not in now else None

    now = wait_until(replaced, 10.0, "the killed worker to be restarted")
    new = (set(now) - set(first)).pop()
    wait_until(lambda: any(f"/pid{new}/" in p["proxy"] for p in proxies_listed(wg)), 10.0,
               "the new worker to take its routes")
    answers = await concurrent_gets(wg.base, REQUESTS)
    assert all(a.status == 200 for a in answers), answers
    restarts = re.findall(r"worker \d \(pid (\d+)\) was killed by SIGKILL; restarting",
                          wg.stderr())
    assert restarts == [str(first[0])], wg.stderr()

    assert wg.stop(signal.SIGTERM, timeout=STOP_DEADLINE) == 0
    for pid in now:
        wait_until(lambda p=pid: not alive(p), 5.0, f"worker {pid} to be gone")
    assert "did not stop" not in wg.stderr()


async def test_workers_die_with_a_killed_up(up_workers) -> None:
    wg = up_workers(demo_config())
    assert wg.proc is not None
    children = workers_of(wg.proc.pid)
    assert len(children) == 1
    os.kill(wg.proc.pid, signal.SIGKILL)  # no chance to stop them: PR_SET_PDEATHSIG does
    wg.proc.wait(5)
    wait_until(lambda: not alive(children[0]), 5.0, "the worker of a killed `up` to exit")


# --- wakegate proxy --workers N ---


class ProxyWorkers:
    """`wakegate proxy --workers N --listen 127.0.0.1:0` against a controller."""

    def __init__(self, tmp: Path, sp: Split, workers: int) -> None:
        self.marker = uuid.uuid4().hex
        self.lines: list[str] = []
        self.stderr_path = tmp / "proxy-workers.stderr"
        with open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "proxy",
                 "-c", str(sp.controller.config_path), "--controller", sp.controller.controller,
                 "--listen", "127.0.0.1:0", "--workers", str(workers),
                 "--report-interval", "100ms"],
                cwd=REPO, env=process_env(self.marker, sp.token), stdout=subprocess.PIPE,
                stderr=err, text=True, stdin=subprocess.DEVNULL,
            )
        threading.Thread(target=self._read, daemon=True).start()
        up = wait_until(self._up, 20.0, "`wakegate proxy --workers` to be up")
        self.base = f"http://127.0.0.1:{up}"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def _up(self) -> str | None:
        if self.proc.poll() is not None:
            raise AssertionError(f"exited with {self.proc.returncode}: "
                                 f"{self.stderr_path.read_text()}")
        if not any(line.startswith("Press Ctrl-C") for line in self.lines):
            return None
        found = re.search(r"is up on 127\.0\.0\.1:(\d+)", "".join(self.lines))
        return found.group(1) if found else None

    def leftovers(self) -> list[int]:
        return processes_with("WAKEGATE_TEST_INSTANCE", self.marker)


async def test_proxy_with_two_workers_against_a_controller(split, tmp_path: Path) -> None:
    sp = split(demo_config(), proxies=0, token="workers-token-" + "y" * 16)
    pw = ProxyWorkers(tmp_path, sp, workers=2)
    try:
        children = workers_of(pw.proc.pid)
        assert len(children) == 1, children
        # Both took the table with the token they inherited, and report on their own.
        wanted = {f"pid{pw.proc.pid}", f"pid{children[0]}"}
        wait_until(lambda: {p["proxy"].split("/")[1] for p in sp.live_proxies()
                            if p["table"]} == wanted, 10.0, "both workers to report")
        answers = await concurrent_gets(pw.base, REQUESTS)
        assert all(a.status == 200 and a.cold for a in answers), answers
        wait_until(lambda: all(p["instances"] for p in sp.live_proxies()), 5.0,
                   "both workers to report having served requests")

        assert stop_process(pw.proc, "proxy --workers", signal.SIGTERM, STOP_DEADLINE) == 0
        assert not alive(children[0])
        # Each said goodbye: the controller forgets them at once, not after their TTL.
        assert sp.live_proxies() == []
    finally:
        if pw.proc.poll() is None:
            pw.proc.kill()
            pw.proc.wait()
        for pid in pw.leftovers():
            os.kill(pid, signal.SIGKILL)
