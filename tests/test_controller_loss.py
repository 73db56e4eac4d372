"""Zero failed requests when the controller dies in split mode.

Steady load from many clients through two `wakegate proxy` processes; the
controller is SIGKILLed and started again a few seconds later, twice. With the
local runtime its replicas die with it (PR_SET_PDEATHSIG): the proxies must
hold the requests that find them gone and have the new controller wake the
instance, never answer 502. With the Kubernetes runtime the pods stay up and
the proxies keep serving from their last route table meanwhile. Either way
every request a client sent gets 200.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import Callable
from typing import Any

import aiohttp

from .client import Answer, fetch
from .conftest import Split, Wakegate, hello_service
from .kube_cluster import Cluster

CLIENTS = 50
DOWN_FOR = 3.0  # seconds between the SIGKILL and the new controller's start
ROUNDS = 2
ANSWERS_BETWEEN = 400  # answers seen before each kill, and again once the controller is back


class Load:
    """CLIENTS clients sending GET / in a loop, spread over the proxies and the hosts,
    until stopped."""

    def __init__(self, bases: list[str], hosts: list[str]) -> None:
        self.targets = [(base, host) for host in hosts for base in bases]
        self.statuses: Counter[int] = Counter()
        self.failures: list[Answer | str] = []
        self.cold = 0
        self._stop = asyncio.Event()
        self._count_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                           timeout=aiohttp.ClientTimeout(total=60))
        self._tasks = [asyncio.ensure_future(self._client(*self.targets[i % len(self.targets)]))
                       for i in range(CLIENTS)]

    async def _client(self, base: str, host: str) -> None:
        assert self._http is not None
        while not self._stop.is_set():
            try:
                answer = await fetch(self._http, base, host)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
                self.statuses[0] += 1
            else:
                self.statuses[answer.status] += 1
                self.cold += answer.cold
                if answer.status != 200:
                    self.failures.append(answer)
            self._count_changed.set()

    async def until(self, answers: int, timeout: float, what: str) -> None:
        """Until `answers` more requests were answered than now, within `timeout` seconds."""
        target = self.answered + answers

        async def reached() -> None:
            while self.answered < target:
                self._count_changed.clear()
                await self._count_changed.wait()

        try:
            await asyncio.wait_for(reached(), timeout)
        except TimeoutError:
            raise AssertionError(f"only {self.answered} of {target} answers after {timeout}s "
                                 f"({what}); failures so far: {self.failures[:5]}") from None

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()


async def kill_and_restart_under_load(deployment: Split, hosts: list[str]) -> Load:
    load = Load([p.base for p in deployment.proxies], hosts)
    await load.start()
    try:
        await load.until(ANSWERS_BETWEEN, 30.0, "before the first kill")
        for _ in range(ROUNDS):
            await asyncio.to_thread(deployment.controller.stop, signal.SIGKILL)
            await asyncio.sleep(DOWN_FOR)  # the outage itself: the load goes on meanwhile
            await asyncio.to_thread(deployment.controller.start)
            await load.until(ANSWERS_BETWEEN, 60.0, "once the controller is back")
    finally:
        await load.stop()
    return load


def assert_every_request_succeeded(load: Load) -> None:
    assert load.failures == [], (
        f"{len(load.failures)} of {load.answered} requests failed: {load.failures[:10]}")
    assert load.statuses == Counter({200: load.answered})
    assert load.answered >= (ROUNDS + 1) * ANSWERS_BETWEEN


async def test_local_runtime_every_request_succeeds_across_controller_kills(
    split: Callable[..., Split],
) -> None:
    # demo: one replica that sleeps; staging: always on, two replicas.
    deployment = split({
        "environments": {"demo": {"idle_timeout": "1h", "hold_timeout": "30s"},
                         "staging": {"min_replicas": 2, "max_replicas": 2,
                                     "hold_timeout": "30s"}},
        "services": {"hello": hello_service(environments=["demo", "staging"])},
    }, proxies=2)
    deployment.wait_state("staging", "hello", "ready")
    load = await kill_and_restart_under_load(
        deployment, [Wakegate.host("hello", "demo"), Wakegate.host("hello", "staging")])
    assert_every_request_succeeded(load)
    # The replicas died with each controller, so requests were held through new wakes.
    assert load.cold > 0, "no request was held while the instance was woken again"
    assert deployment.state("demo", "hello") == "ready"
    assert deployment.status()[("staging", "hello")]["replicas"] == 2



async def test_kubernetes_runtime_every_request_succeeds_across_controller_kills(
    cluster: Cluster, split: Callable[..., Split],
) -> None:
    cluster.environment("hello-demo", "demo", "demo")
    cluster.service("hello-demo", "hello", replicas=2)
    config: dict[str, Any] = {
        "runtime": "kubernetes",
        "kubernetes": cluster.settings(),
        "environments": {"demo": {"idle_timeout": "1h", "hold_timeout": "30s"}},
        "services": {},
    }
    deployment = split(config, proxies=2)
    pods = cluster.pod_pids("hello-demo", "hello")
    assert len(pods) == 2
    load = await kill_and_restart_under_load(deployment, [Wakegate.host("hello", "demo")])
    assert_every_request_succeeded(load)
    # The pods outlived every controller: nothing had to be woken again.
    assert cluster.pod_pids("hello-demo", "hello") == pods
    assert load.cold == 0
