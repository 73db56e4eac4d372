"""Open-loop load: requests at a constant rate, latency from each one's *scheduled* time.

A closed-loop tool (wrk) sends the next request only when the last answered,
so a stall delays the requests that would have been sent meanwhile and they
never show up as slow (coordinated omission). Here request i is due at
start + i / rate whatever happened before; its latency is measured from that
due time to the end of its response. A stalled target therefore shows its
stall in p99/p99.9, and so does a generator that cannot keep up: `send_lag`
(due time → actually written) says how late the generator itself was.

Requests go over a pool of keep-alive HTTP/1.1 connections (raw asyncio
streams on uvloop); a due request takes any free connection. `--processes P`
splits the rate over P processes (interleaved due times on one shared
monotonic clock) when one Python process cannot keep up.

Usage: python -m bench.openloop --port 8080 --host be.staging.localhost --rate 1000
           [--seconds 10] [--connections 32] [--processes 1] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import time
from dataclasses import dataclass, field
from typing import Any

from bench.tools import latency_summary

_READ_TIMEOUT = 10.0
# CLOCK_MONOTONIC in full resolution, one clock for every process on the machine.
# Not loop.time(): uvloop's is cached per loop iteration in whole milliseconds.
clock = time.monotonic


@dataclass
class Raw:
    """One process's measurements, in seconds."""

    latencies: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)  # from the actual write
    send_lags: list[float] = field(default_factory=list)
    scheduled: int = 0
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0


@dataclass
class Response:
    status: int
    keep_alive: bool
    headers: dict[str, str]  # by lowercase name
    body: bytes


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One whole response (Content-Length, chunked, or none)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    close = lines[0].startswith("HTTP/1.0") or "close" in headers.get("connection", "").lower()
    body = b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += (await reader.readexactly(size + 2))[:-2]
        await reader.readuntil(b"\r\n")  # the empty trailer section
    elif length := int(headers.get("content-length", "0")):
        body = await reader.readexactly(length)
    return Response(status, not close, headers, body)


async def _worker(queue: asyncio.Queue[float | None], port: int, request: bytes,
                  raw: Raw) -> None:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    while (due := await queue.get()) is not None:
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert reader is not None
            sent = clock()
            raw.send_lags.append(sent - due)
            writer.write(request)
            response = await asyncio.wait_for(read_response(reader), _READ_TIMEOUT)
            done = clock()
            status = response.status
            raw.latencies.append(done - due)
            raw.service.append(done - sent)
            raw.statuses[status] = raw.statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                raw.errors += 1
            if not response.keep_alive:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, ValueError, IndexError):
            raw.errors += 1
            if writer is not None:
                writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def _run(port: int, host: str, path: str, rate: float, seconds: float, connections: int,
               start: float, phase: int, stride: int) -> Raw:
    """Requests phase, phase + stride, ... of the whole schedule (rate over every process)."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: openloop\r\n\r\n".encode()
    raw = Raw()
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    workers = [asyncio.ensure_future(_worker(queue, port, request, raw))
               for _ in range(connections)]
    total = int(rate * seconds)
    i = phase
    while i < total:
        now = clock()
        # Everything due by now goes out at once: a late wake-up never thins the load.
        while i < total and start + i / rate <= now:
            queue.put_nowait(start + i / rate)
            raw.scheduled += 1
            i += stride
        if i < total:
            await asyncio.sleep(max(0.0, start + i / rate - clock()))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    raw.elapsed = clock() - start
    return raw


def _run_process(args: tuple[Any, ...]) -> Raw:
    import uvloop

    return uvloop.run(_run(*args))


def run(port: int, host: str, rate: float, seconds: float, connections: int = 32,
        processes: int = 1, path: str = "/") -> dict[str, Any]:
    """Send `rate` requests/s for `seconds`; latency percentiles from scheduled send times."""
    start = clock() + 0.2 + 0.3 * (processes > 1)  # spawned processes need a moment
    per = max(1, connections // processes)
    jobs = [(port, host, path, rate, seconds, per, start, p, processes) for p in range(processes)]
    if processes == 1:
        parts = [_run_process(jobs[0])]
    else:
        # fork: the children need nothing but these arguments; no event loop runs here.
        with multiprocessing.get_context("fork").Pool(processes) as pool:
            parts = pool.map(_run_process, jobs)
    merged = Raw()
    for part in parts:
        merged.latencies += part.latencies
        merged.service += part.service
        merged.send_lags += part.send_lags
        merged.scheduled += part.scheduled
        merged.errors += part.errors
        merged.elapsed = max(merged.elapsed, part.elapsed)
        for status, n in part.statuses.items():
            merged.statuses[status] = merged.statuses.get(status, 0) + n
    completed = len(merged.latencies)
    lag = latency_summary(merged.send_lags)
    return {
        "rate": rate,
        "seconds": seconds,
        "connections": per * processes,
        "processes": processes,
        "scheduled": merged.scheduled,
        "completed": completed,
        "errors": merged.errors,
        "statuses": {str(k): v for k, v in sorted(merged.statuses.items())},
        # Completed requests over the time until the last one ended.
        "achieved_rps": round(completed / merged.elapsed, 1) if merged.elapsed else 0.0,
        "latency": latency_summary(merged.latencies),
        # From the actual write: what the target took, without the generator's lateness.
        "service_latency": latency_summary(merged.service),
        "send_lag": {"p50_ms": lag["p50_ms"], "p99_ms": lag["p99_ms"], "max_ms": lag["max_ms"]},
    }


def sustained(result: dict[str, Any], lag_ms: float = 5.0) -> bool:
    """Did the generator keep to its schedule? (all answered, none sent late at p99)"""
    return (result["completed"] >= 0.99 * result["scheduled"] and result["errors"] == 0
            and result["send_lag"]["p99_ms"] <= lag_ms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True, help="on 127.0.0.1")
    parser.add_argument("--host", default="localhost", help="the Host header")
    parser.add_argument("--path", default="/")
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--json", help="write the result to this file ('-': stdout only)")
    args = parser.parse_args()
    result = run(args.port, args.host, args.rate, args.seconds, args.connections,
                 args.processes, args.path)
    text = json.dumps(result, indent=2)
    if args.json and args.json != "-":
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
