"""Autoscale: a load that steps from low to 4 x one replica's capacity and back down.

The service is bench/limited_backend.py: at most C requests at a time, each
taking D ms, so one replica serves C / D requests per second and the rest
wait in it. It runs as the always-on `staging` instance (min 1, max 8
replicas) with target_concurrency = C and autoscale windows short enough for
a run of about a minute: stable window 6 s, panic window 600 ms, a step down
at most every 2 s (the defaults are 60 s, 6 s and 30 s), and a replica taken
out of the routes drains for 1 s before it stops (the environment's
scale_down_delay, 30 s by default; each step down waits for the last drain). The load, 70 s by
default, is open loop (as in bench/openloop.py: request i is due at its
scheduled time whatever happened before, and its latency runs from then), in
three phases: low (0.5 x one replica's capacity) for 10 s, the step (4 x)
for 20 s, low again for 40 s. Meanwhile the controller's /v1/status is read
every 100 ms: replicas ready (`replicas`) and wanted (`desired_replicas`).

Reported, one row per second: offered rate, replicas ready/desired, p50/p99
latency of the requests due in that second, and every non-2xx (with
wakegate's error code) and client error. The figures: time from the step to
enough ready replicas (their capacity covers the step's rate), p99 during
the step, requests failed during scale-up (the step) and during scale-down
(the last phase), both of which must be 0, and how soon after the load drops
the replicas added for the step are gone.

Usage: python -m bench.autoscale [--concurrency 4] [--service-ms 20] [--seconds 10,20,40]
           [--low 0.5] [--high 4] [--max-replicas 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench import openloop
from bench.coldstart import Wakegate
from bench.limited_backend import capacity
from bench.tools import REPO, api, latency_summary, wakegate, workdir, write_result

SCENARIO = "autoscale"
ENVIRONMENT, SERVICE = "staging", "be"
HOST = f"{SERVICE}.{ENVIRONMENT}.localhost"
POLL = 0.1  # seconds between two reads of /v1/status
_READ_TIMEOUT = 30.0
_LISTED = 200  # non-2xx answers listed one by one; all of them are counted


@dataclass(frozen=True)
class Settings:
    concurrency: int = 4  # requests one replica serves at once
    service_ms: float = 20.0  # each request's time in the backend
    low: float = 0.5  # x one replica's capacity, before and after the step
    high: float = 4.0  # x one replica's capacity, the step
    # low, step, low again: the last is long enough for the steps down (one per
    # scale_down_delay, after a stable window), from max_replicas to one.
    seconds: tuple[float, float, float] = (10.0, 20.0, 40.0)
    min_replicas: int = 1
    max_replicas: int = 8
    # Short for a one-minute run (the defaults are 60 s, 6 s and 30 s).
    window: float = 6.0
    panic_window: float = 0.6
    panic_threshold: float = 2.0
    target_utilization: float = 0.7
    scale_down_delay: float = 2.0
    # The environment's scale_down_delay (default 30 s): how long a replica taken out of
    # the routes drains before it is stopped; the next step down waits for it. Requests
    # here take 20 ms.
    drain: float = 1.0
    connections: int = 256  # the generator's pool: above the requests in flight at the step

    @property
    def capacity(self) -> float:
        return capacity(self.concurrency, self.service_ms / 1000)

    def phases(self) -> list[tuple[str, float, float]]:
        """(name, requests per second, seconds) of each phase."""
        low, high = self.low * self.capacity, self.high * self.capacity
        return [("low", low, self.seconds[0]), ("step", high, self.seconds[1]),
                ("low again", low, self.seconds[2])]


def phase_seconds(text: str) -> tuple[float, float, float]:
    """"10,20,40": the seconds of the low phase, the step and the low phase after it."""
    low, step, again = (float(part) for part in text.split(","))
    return low, step, again


def _ms(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def config(s: Settings) -> dict[str, Any]:
    """The staging environment with short autoscale windows, and the limited backend in it."""
    return {
        "environments": {ENVIRONMENT: {
            "min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
            "scale_down_delay": _ms(s.drain),
            "autoscale": {"target_concurrency": s.concurrency,
                          "target_utilization": s.target_utilization,
                          "window": _ms(s.window), "panic_window": _ms(s.panic_window),
                          "panic_threshold": s.panic_threshold,
                          "scale_down_delay": _ms(s.scale_down_delay)}}},
        "services": {SERVICE: {
            "command": "{python} -m bench.limited_backend --port {port} "
                       f"--concurrency {s.concurrency} --service-ms {s.service_ms:g}",
            "version": "bench", "readiness": {"tcp": True}, "env": {"PYTHONPATH": str(REPO)},
            "stop_grace": "5s", "environments": [ENVIRONMENT]}},
    }


# --- what the controller says: replicas ready and desired ---


def _replicas(wg: Wakegate) -> tuple[str, int, int | None]:
    """(state, replicas ready, replicas desired or None when the controller has no such field)."""
    row = next(r for r in api(wg, "/v1/status")["instances"]
               if (r["environment"], r["service"]) == (ENVIRONMENT, SERVICE))
    return str(row["state"]), int(row["replicas"]), row.get("desired_replicas")


def _until_ready(wg: Wakegate, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while (state := _replicas(wg))[0] != "ready" or state[1] < 1:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{ENVIRONMENT}/{SERVICE} stayed {state[0]}")
        time.sleep(POLL)


class _Poller(threading.Thread):
    """(seconds since the load's start, ready, desired) every POLL seconds, until stopped."""

    def __init__(self, wg: Wakegate, start: float) -> None:
        super().__init__(daemon=True)
        self.wg, self.start_at = wg, start
        self.samples: list[tuple[float, int, int | None]] = []
        self.failed_reads = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                _, ready, desired = _replicas(self.wg)
                self.samples.append((round(openloop.clock() - self.start_at, 3), ready, desired))
            except (OSError, ValueError):  # the controller busy past the timeout, say
                self.failed_reads += 1
            self.done.wait(POLL)


# --- the load ---


@dataclass
class Outcome:
    """One request: due `due` s after the load's start; latency from then to its answer's end."""

    due: float
    phase: int  # index in Settings.phases()
    latency: float | None = None  # None: no answer (see error)
    status: int | None = None
    error: str | None = None  # wakegate's error code of a non-2xx answer, or the client error
    send_lag: float = 0.0


def schedule(phases: list[tuple[str, float, float]]) -> list[Outcome]:
    """Every request of every phase, in due order."""
    out: list[Outcome] = []
    begins = 0.0
    for phase, (_, rate, seconds) in enumerate(phases):
        out += [Outcome(begins + i / rate, phase) for i in range(int(rate * seconds))]
        begins += seconds
    return out


def _error_code(body: bytes) -> str | None:
    """wakegate's error answers say what went wrong: {"error": code, ...}."""
    with contextlib.suppress(ValueError, AttributeError):
        return str(json.loads(body).get("error"))
    return None


async def _connection(queue: asyncio.Queue[Outcome | None], port: int, request: bytes,
                      start: float) -> None:
    """One keep-alive connection of the pool: takes due requests until told to stop."""
    streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    while (outcome := await queue.get()) is not None:
        due = start + outcome.due
        try:
            if streams is None:
                streams = await asyncio.open_connection("127.0.0.1", port)
            outcome.send_lag = openloop.clock() - due
            streams[1].write(request)
            response = await asyncio.wait_for(openloop.read_response(streams[0]), _READ_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ValueError, IndexError) as exc:
            outcome.error = type(exc).__name__
            if streams is not None:
                streams[1].close()
            streams = None
            continue
        outcome.latency, outcome.status = openloop.clock() - due, response.status
        if not 200 <= response.status < 300:
            outcome.error = _error_code(response.body)
        if not response.keep_alive:
            streams[1].close()
            streams = None
    if streams is not None:
        streams[1].close()


async def _load(port: int, requests: list[Outcome], connections: int, start: float) -> None:
    request = f"GET / HTTP/1.1\r\nHost: {HOST}\r\nUser-Agent: openloop\r\n\r\n".encode()
    queue: asyncio.Queue[Outcome | None] = asyncio.Queue()
    pool = [asyncio.ensure_future(_connection(queue, port, request, start))
            for _ in range(connections)]
    for outcome in requests:
        # Sent when due, whatever happened before: a late wake-up sends what is due at once.
        if (wait := start + outcome.due - openloop.clock()) > 0:
            await asyncio.sleep(wait)
        queue.put_nowait(outcome)
    for _ in pool:
        queue.put_nowait(None)
    await asyncio.gather(*pool)


# --- the report ---


def _ok(r: Outcome) -> bool:
    return r.status is not None and 200 <= r.status < 300


def _failed(requests: list[Outcome]) -> int:
    """Answered with anything but 2xx, or not answered at all."""
    return sum(1 for r in requests if not _ok(r))


def _latency(requests: list[Outcome]) -> dict[str, float]:
    return latency_summary([r.latency for r in requests if r.latency is not None])


def _at(samples: list[tuple[float, int, int | None]], t: float) -> tuple[int | None, int | None]:
    """(ready, desired) as last read at or before t."""
    seen = [(ready, desired) for at, ready, desired in samples if at <= t]
    return seen[-1] if seen else (None, None)


def _seconds(requests: list[Outcome], samples: list[tuple[float, int, int | None]],
             phases: list[tuple[str, float, float]]) -> list[dict[str, Any]]:
    """One row per second of the load: requests due in it, replicas at its end."""
    by_second: dict[int, list[Outcome]] = {}
    for r in requests:
        by_second.setdefault(int(r.due), []).append(r)
    rows = []
    for second, due in sorted(by_second.items()):
        latency = _latency(due)
        ready, desired = _at(samples, second + 1)
        rows.append({"t_s": second, "phase": phases[due[0].phase][0],
                     "offered": len(due), "ready": ready, "desired": desired,
                     "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
                     "non_2xx": sum(1 for r in due if r.status is not None and not _ok(r)),
                     "client_errors": sum(1 for r in due if r.status is None)})
    return rows


def figures(requests: list[Outcome], samples: list[tuple[float, int, int | None]],
            s: Settings) -> dict[str, Any]:
    """The figures for the note, from the requests and the replica readings."""
    step_at, drop_at = s.seconds[0], s.seconds[0] + s.seconds[1]
    needed = min(s.max_replicas, math.ceil(s.high - 1e-9))  # the step's rate / one's capacity
    baseline, _ = _at(samples, step_at)
    enough = next((at for at, ready, _ in samples if at >= step_at and ready >= needed), None)
    during_step = [r for r in requests if r.phase == 1]
    after_drop = [r for r in requests if r.phase == 2]
    peak_ready = max((ready for at, ready, _ in samples if step_at <= at), default=None)
    desired = [d for _, _, d in samples if d is not None]
    scaled_up = baseline is not None and peak_ready is not None and peak_ready > baseline
    gone = next((at for at, ready, _ in samples
                 if at >= drop_at and baseline is not None and ready <= baseline), None)
    return {
        "replicas_before_step": baseline,
        "replicas_needed": needed,
        "peak_ready": peak_ready,
        "peak_desired": max(desired) if desired else None,
        "step_to_enough_ready_s": None if enough is None else round(enough - step_at, 2),
        "step_latency": _latency(during_step),
        "failed_during_scale_up": _failed(during_step),
        "failed_during_scale_down": _failed(after_drop),
        # None when no replica was added, so none had to go.
        "drop_to_extra_replicas_gone_s": (round(gone - drop_at, 2)
                                          if scaled_up and gone is not None else None),
    }


def _non_2xx(requests: list[Outcome]) -> dict[str, Any]:
    """Every answer that was not 2xx and every request without an answer: counted by kind,
    the first _LISTED listed with when they were due."""
    bad = [r for r in requests if not _ok(r)]
    kinds: dict[str, int] = {}
    for r in bad:
        kind = f"{r.status or 'no answer'} {r.error or ''}".strip()
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"count": len(bad), "by_kind": kinds,
            "listed": [{"due_s": round(r.due, 3), "status": r.status, "error": r.error}
                       for r in bad[:_LISTED]]}


def run(settings: Settings | None = None) -> dict[str, Any]:
    import uvloop

    s = settings or Settings()
    phases = s.phases()
    requests = schedule(phases)
    with workdir(SCENARIO) as tmp, wakegate(tmp / "wakegate", config(s)) as wg:
        _until_ready(wg)
        start = openloop.clock() + 0.2
        poller = _Poller(wg, start)
        poller.start()
        try:
            uvloop.run(_load(wg.proxy_port, requests, s.connections, start))
        finally:
            poller.done.set()
            poller.join()
    answered = [r for r in requests if r.latency is not None]
    return {
        "scenario": SCENARIO,
        "status": "ok",
        "settings": {**asdict(s), "capacity_per_replica_rps": s.capacity,
                     "environment": ENVIRONMENT, "poll_ms": POLL * 1000},
        "phases": [{"name": name, "rate": rate, "seconds": seconds,
                    "requests": len(part), "failed": _failed(part),
                    "latency": _latency(part)}
                   for k, (name, rate, seconds) in enumerate(phases)
                   for part in [[r for r in requests if r.phase == k]]],
        "figures": figures(requests, poller.samples, s),
        "seconds": _seconds(requests, poller.samples, phases),
        "scheduled": len(requests),
        "answered": len(answered),
        "non_2xx": _non_2xx(requests),
        "send_lag": {k: v for k, v in latency_summary([r.send_lag for r in requests
                                                       if r.latency is not None]).items()
                     if k in ("p50_ms", "p99_ms", "max_ms")},
        "status_reads": len(poller.samples),
        "status_reads_failed": poller.failed_reads,
        "desired_reported": any(d is not None for _, _, d in poller.samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    d = Settings()
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--service-ms", type=float, default=d.service_ms)
    parser.add_argument("--seconds", default=",".join(f"{x:g}" for x in d.seconds),
                        help="of each phase: low, step, low again")
    parser.add_argument("--low", type=float, default=d.low, help="x one replica's capacity")
    parser.add_argument("--high", type=float, default=d.high, help="x one replica's capacity")
    parser.add_argument("--max-replicas", type=int, default=d.max_replicas)
    args = parser.parse_args()
    result = run(Settings(concurrency=args.concurrency, service_ms=args.service_ms,
                          low=args.low, high=args.high, seconds=phase_seconds(args.seconds),
                          max_replicas=args.max_replicas))
    write_result(result)
    from bench.report import autoscale_table

    print(autoscale_table(result))


if __name__ == "__main__":
    main()
