"""Load and replica-count helpers shared by the autoscaling tests of both runtimes.

The load is the example service's `/slow?ms=N` from a number of clients, each
sending its next request as soon as the last one is answered, so the
concurrency the proxy sees is about the number of clients.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .conftest import Wakegate, hello_service, wait_for

Start = Callable[..., Wakegate]
SERVICE = "hello"
DEADLINE = 30.0  # for a step that takes well under a second on a quiet machine


def autoscale(**overrides: Any) -> dict[str, Any]:
    """Short windows, and a target that makes the desired count easy to tell."""
    return {"target_concurrency": 1, "target_utilization": 1.0, "window": "1s",
            "panic_window": "300ms", "panic_threshold": 2.0, "scale_down_delay": "500ms",
            **overrides}


def config(environment: str, kind: str, service: dict[str, Any] | None = None, **env: Any
           ) -> dict[str, Any]:
    envs = {environment: {"kind": kind, **env}}
    return {"environments": envs,
            "services": {SERVICE: hello_service(environments=list(envs), **(service or {}))}}


class Load:
    """`clients` clients sending POST `path` back to back until stopped; every answer kept.

    POST: a request the proxy never sends twice, so that one cut short on a replica that
    goes away shows as a failure here instead of being retried on another replica."""

    def __init__(self, wg: Wakegate, environment: str, clients: int,
                 path: str = "/slow?ms=100") -> None:
        self._wg, self._host, self._path = wg, wg.host(SERVICE, environment), path
        self.answers: list[tuple[int, str]] = []  # (status, body or what went wrong)
        self._http: aiohttp.ClientSession | None = None
        self._clients: list[asyncio.Task[None]] = []
        self.add(clients)

    def add(self, clients: int) -> None:
        for _ in range(clients):
            stop = asyncio.Event()
            task = asyncio.ensure_future(self._client(stop))
            task.stop = stop  # type: ignore[attr-defined]
            self._clients.append(task)

    async def remove(self, clients: int) -> None:
        """Stop `clients` of the clients (each after its request in flight is answered)."""
        going, self._clients = self._clients[:clients], self._clients[clients:]
        for task in going:
            task.stop.set()  # type: ignore[attr-defined]
        await asyncio.gather(*going)

    async def _client(self, stop: asyncio.Event) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        while not stop.is_set():
            try:
                async with self._http.post(self._wg.base + self._path, data=b"x",
                                           headers={"Host": self._host}) as r:
                    self.answers.append((r.status, (await r.text())[:200]))
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.answers.append((0, repr(exc)))

    def failed(self) -> list[tuple[int, str]]:
        return [a for a in self.answers if a[0] != 200]

    async def close(self) -> None:
        await self.remove(len(self._clients))
        if self._http is not None:
            await self._http.close()


class Replicas:
    """The instance's `replicas` and `desired_replicas` as /v1/status shows them, polled."""

    def __init__(self, wg: Wakegate, environment: str) -> None:
        self._wg, self._key = wg, (environment, SERVICE)
        self.seen: list[tuple[float, int, int]] = []  # (monotonic, ready, desired)

    def poll(self) -> tuple[int, int]:
        row = self._wg.status()[self._key]
        self.seen.append((time.monotonic(), row["replicas"], row["desired_replicas"]))
        return row["replicas"], row["desired_replicas"]

    async def until(self, ready: int, what: str, timeout: float = DEADLINE) -> None:
        await wait_for(lambda: self.poll()[0] == ready, timeout, f"{what}: {ready} ready")

    def most(self) -> int:
        return max(max(r, d) for _, r, d in self.seen)

    def steps(self) -> list[int]:
        """The ready counts in the order they were seen, each once."""
        steps: list[int] = []
        for _, ready, _ in self.seen:
            if not steps or steps[-1] != ready:
                steps.append(ready)
        return steps
