"""Hold capacity: 10,000 concurrent requests to one sleeping instance.

Every connection is opened first, then all requests are written at once, so
that they all reach wakegate while the instance sleeps. The instance is a
deliberately slow starter (`--start-delay`, default 2 s, then the fast
backend), so every request is really held rather than forwarded. Reported:
how many got 200 (and with `X-Wakegate-Cold-Start`), the other statuses,
the longest wait, the time from the first answer to the last, the peak of
`wakegate_held_requests`, and wakegate's resident memory: idle before the
burst, and its high-water mark (VmHWM) after it.

The open-file limit is raised in this process before wakegate starts, so
wakegate and the replica inherit it. The environment's hold_queue_size is
set above the connection count (the default, 1,000, would answer the rest
503 by design).

Usage: python -m bench.hold [--connections 10000] [--start-delay 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

from bench import openloop
from bench.targets import backend_service
from bench.tools import (
    metric,
    peak_rss_kib,
    raise_nofile,
    rss_kib,
    wakegate,
    workdir,
    write_result,
)

SCENARIO = "hold"
HOST = "be.demo.localhost"
_CONNECT_AT_ONCE = 500  # connects in flight; more only overflows the listen backlog
_TIMEOUT = 180.0


class _Client:
    """One connection, one request."""

    def __init__(self) -> None:
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.status: int | None = None
        self.cold = False
        self.error: str | None = None
        self.error_code: str | None = None
        self.waited = 0.0
        self.answered_at = 0.0

    async def connect(self, port: int, gate: asyncio.Semaphore) -> None:
        async with gate:
            try:
                self.reader, self.writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 30)
            except (OSError, TimeoutError) as exc:
                self.error = f"connect: {type(exc).__name__}"

    async def exchange(self, request: bytes) -> None:
        if self.writer is None or self.reader is None:
            return
        sent = time.monotonic()
        try:
            self.writer.write(request)
            response = await asyncio.wait_for(openloop.read_response(self.reader), _TIMEOUT)
            self.status = response.status
            self.cold = response.headers.get("x-wakegate-cold-start") == "true"
            if response.status != 200:
                # wakegate's error bodies name what went wrong: {"error": code, ...}
                with contextlib.suppress(ValueError, AttributeError):
                    self.error_code = str(json.loads(response.body).get("error"))
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            self.error = f"request: {type(exc).__name__}"
        self.answered_at = time.monotonic()
        self.waited = self.answered_at - sent
        self.writer.close()


async def _sample(port: int, pid: int, peak: dict[str, float], stop: asyncio.Event) -> None:
    """The held-requests gauge and the RSS, every 100 ms while the burst runs."""
    while not stop.is_set():
        with contextlib.suppress(OSError, ValueError):
            held = await asyncio.to_thread(metric, port, "wakegate_held_requests")
            peak["held"] = max(peak["held"], held)
        with contextlib.suppress(OSError):
            peak["rss"] = max(peak["rss"], rss_kib(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.1)


async def _burst(port: int, pid: int, connections: int) -> tuple[list[_Client], dict[str, float],
                                                                 float]:
    clients = [_Client() for _ in range(connections)]
    gate = asyncio.Semaphore(_CONNECT_AT_ONCE)
    await asyncio.gather(*(c.connect(port, gate) for c in clients))
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    peak = {"held": 0.0, "rss": 0.0}
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(_sample(port, pid, peak, stop))
    started = time.monotonic()
    try:
        await asyncio.gather(*(c.exchange(request) for c in clients))
    finally:
        stop.set()
        await sampler
    return clients, peak, started


def run(connections: int = 10000, start_delay: float = 2.0) -> dict[str, Any]:
    import uvloop

    # Each held request is a socket here and one in wakegate, plus one upstream.
    nofile = raise_nofile(2 * connections + 4096)
    queue = connections + 100
    config = {
        "environments": {"demo": {"idle_timeout": "10m", "hold_timeout": "120s",
                                  "hold_queue_size": queue}},
        "services": {},
    }
    with workdir(SCENARIO) as tmp:
        config["services"] = {"be": {**backend_service(tmp, start_delay=start_delay),
                                     "environments": ["demo"],
                                     "start_timeout": f"{start_delay + 60:g}s"}}
        with wakegate(tmp / "wakegate", config) as wg:
            time.sleep(1.0)  # let it settle before the baseline is read
            idle = rss_kib(wg.proc.pid)
            clients, peak, started = uvloop.run(_burst(wg.proxy_port, wg.proc.pid, connections))
            hwm = peak_rss_kib(wg.proc.pid)
            # The proxy's own account: first held request → instance ready.
            wake = metric(wg.proxy_port, "wakegate_cold_start_duration_seconds_sum")
    statuses: dict[str, int] = {}
    for c in clients:
        if c.status is not None:
            statuses[str(c.status)] = statuses.get(str(c.status), 0) + 1
    errors: dict[str, int] = {}
    for c in clients:
        if c.error:
            errors[c.error] = errors.get(c.error, 0) + 1
    for c in clients:
        if c.error_code:
            errors[c.error_code] = errors.get(c.error_code, 0) + 1
    answered = [c.answered_at for c in clients if c.status is not None]
    return {
        "scenario": SCENARIO,
        "status": "ok",
        "connections": connections,
        "start_delay_s": start_delay,
        "hold_queue_size": queue,
        "nofile": nofile,
        "answered_200": statuses.get("200", 0),
        "cold_start_header": sum(c.cold for c in clients),
        "statuses": dict(sorted(statuses.items())),
        "errors": sum(1 for c in clients if c.error),
        "error_kinds": errors,  # client errors, and the error codes of non-200 answers
        "wake_s": round(wake, 3),
        "peak_held": int(peak["held"]),
        "last_wait_s": round(max((c.waited for c in clients), default=0.0), 3),
        "first_answer_s": round(min(answered) - started, 3) if answered else None,
        "drain_s": round(max(answered) - min(answered), 3) if answered else None,
        "rss_idle_mib": round(idle / 1024, 1),
        "rss_peak_mib": round(max(hwm, peak["rss"]) / 1024, 1),
        "rss_over_idle_mib": round((max(hwm, peak["rss"]) - idle) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=10000)
    parser.add_argument("--start-delay", type=float, default=2.0, metavar="SECONDS")
    args = parser.parse_args()
    result = run(args.connections, args.start_delay)
    write_result(result)
    from bench.report import hold_table

    print(hold_table(result))


if __name__ == "__main__":
    main()
