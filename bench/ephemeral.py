"""Ephemeral environments on the local runtime: create → first answer, expiry → all gone.

Each run makes an ephemeral environment from `demo` (POST /v1/environments), sends
its first request (a cold start: the process is started then), and notes:

- create → first answer: from sending the create to the end of that first answer
  (split into the create call and the cold first request);
- expiry → all gone: the environment is extended to expire EXPIRE_IN from now while
  its process runs and nothing is in flight; from that moment to the first reading of
  /v1/environments without it, its process gone (the controller answers and polls
  every few milliseconds, so the figure includes up to POLL of polling);
- delete: how long `DELETE /v1/environments/NAME` of an awake environment takes to
  answer (it answers once everything of it is gone).

Run by hand (not part of `make bench` nor of the tests):
python -m bench.ephemeral [--runs 10] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bench.coldstart import Wakegate
from bench.tools import http_get, latency_summary, wakegate, workdir
from tests.procs import alive

SCENARIO = "ephemeral"
POLL = 0.005
EXPIRE_IN = 1.0  # seconds: the TTL an extend gives (the least it takes), to expire while we watch


def _call(wg: Wakegate, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        f"http://127.0.0.1:{wg.api_port}{path}", data=data, method=method,
        headers={"Authorization": f"Bearer {wg.token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as resp:
            return int(resp.status), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), json.loads(exc.read())


def _listed(wg: Wakegate, name: str) -> bool:
    _, body = _call(wg, "GET", "/v1/environments")
    return any(e["name"] == name for e in body["environments"])


def _create_and_wake(wg: Wakegate, name: str) -> tuple[float, float, int]:
    """(seconds of the create call, seconds of the first answer, the process's pid)."""
    started = time.monotonic()
    status, body = _call(wg, "POST", "/v1/environments",
                         {"name": name, "from": "demo", "ttl": "1h"})
    if status != 201:
        raise RuntimeError(f"create {name}: {status} {body}")
    created = time.monotonic()
    status, answer = http_get(wg.proxy_port, f"hello.{name}.localhost")
    if status != 200:
        raise RuntimeError(f"first request to {name}: {status} {answer[:200]!r}")
    return created - started, time.monotonic() - created, int(json.loads(answer)["pid"])


def run(runs: int = 10) -> dict[str, Any]:
    create_call: list[float] = []
    first_answer: list[float] = []
    create_to_answer: list[float] = []
    expiry_to_gone: list[float] = []
    delete_call: list[float] = []
    with workdir(SCENARIO) as tmp:
        overrides = {"environments": {"demo": {"idle_timeout": "1h", "scale_down_delay": "5s"}},
                     "ephemeral": {"idle_timeout": "1h", "ttl": "1h", "max_ttl": "2h"}}
        with wakegate(tmp / "wakegate", overrides) as wg:
            for i in range(runs):
                name = f"bench-{i}"
                call, first, pid = _create_and_wake(wg, name)
                create_call.append(call)
                first_answer.append(first)
                create_to_answer.append(call + first)
                if i % 2 == 0:  # expiry
                    status, body = _call(wg, "POST", f"/v1/environments/{name}/extend",
                                         {"ttl": f"{EXPIRE_IN}s"})
                    if status != 200:
                        raise RuntimeError(f"extend {name}: {status} {body}")
                    expires = time.monotonic() + EXPIRE_IN
                    deadline = expires + 60
                    while _listed(wg, name) or alive(pid):
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"{name} was not gone a minute after its expiry")
                        time.sleep(POLL)
                    expiry_to_gone.append(time.monotonic() - expires)
                else:  # delete
                    started = time.monotonic()
                    status, body = _call(wg, "DELETE", f"/v1/environments/{name}")
                    if status != 200 or alive(pid) or _listed(wg, name):
                        raise RuntimeError(f"delete {name}: {status} {body}, still there")
                    delete_call.append(time.monotonic() - started)
    return {
        "scenario": SCENARIO, "status": "ok", "runs": runs, "poll_ms": POLL * 1000,
        "create_call": latency_summary(create_call),
        "first_answer_cold": latency_summary(first_answer),
        "create_to_first_answer": latency_summary(create_to_answer),
        "expiry_to_all_gone": latency_summary(expiry_to_gone),
        "delete_call": latency_summary(delete_call),
    }


def table(result: dict[str, Any]) -> str:
    lines = [f"ephemeral environments, local runtime ({result['runs']} runs)", "",
             "| measure | n | p50 ms | p90 ms | max ms |", "|---|---|---|---|---|"]
    for key in ("create_call", "first_answer_cold", "create_to_first_answer",
                "expiry_to_all_gone", "delete_call"):
        s = result[key]
        lines.append(f"| {key.replace('_', ' ')} | {s['n']} | {s.get('p50_ms')} | "
                     f"{s.get('p90_ms')} | {s.get('max_ms')} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    result = run(args.runs)
    result["load_average_before"] = round(load, 2)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"load average before: {load:.2f}")
    print(table(result))


if __name__ == "__main__":
    main()
