"""The Kubernetes runtime's side of autoscaling, against the fake API server.

First the runtime alone, in this process (the scaler's calls made by hand
through the runtime port): the real kubernetes-asyncio client talks HTTPS to
the fake API server, whose kubelet runs the hello example as real processes
behind real EndpointSlices. Scaling a running Deployment up, scaling it down by
one chosen pod (pod-deletion-cost), leaving a Deployment that an HPA scales
alone, and the autoscale settings read from annotations. Then the whole
controller (`wakegate up`) under a real HTTP load, as tests/test_autoscale.py
does on the local runtime.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from controller.config import load_config
from controller.model import Key, Replica
from controller.runtimes.kubernetes import KubernetesRuntime
from controller.spec import Autoscale, InstanceSpec

from .autoscale_load import DEADLINE, Load, Replicas, autoscale
from .client import get
from .conftest import Wakegate, wait_for
from .kube_cluster import Cluster

Start = Callable[..., Wakegate]
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
KEY: Key = ("production", "hello")


class Recorder:
    """The runtime's events (RuntimeEvents), kept for the test to look at."""

    def __init__(self) -> None:
        self.specs: dict[Key, InstanceSpec] = {}
        self.appeared: list[Any] = []
        self.exited: list[Any] = []

    def sync_instances(self, specs: list[InstanceSpec], stop_removed: bool = True) -> None:
        self.specs = {s.key: s for s in specs}

    def replica_appeared(self, key: Key, replica: Replica, active_at: float | None = None
                         ) -> None:
        self.appeared.append(replica)

    def colour_replica_appeared(self, key: Key, colour: str, replica: Replica) -> None:
        self.appeared.append(replica)

    def replica_exited(self, key: Key, replica: Replica, code: int) -> None:
        self.exited.append(replica)

    def keys_changed(self, key: Key) -> None:
        return None

    def running_activity(self, key: Key) -> tuple[int, float] | None:
        return None

    def stop_acting(self) -> None:
        raise AssertionError("the runtime lost its Lease during the test")


async def until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll `predicate` on the event loop (the runtime's watches keep running) until it is
    true, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


@pytest.fixture
async def opened(cluster: Cluster, tmp_path: Path
                 ) -> AsyncIterator[Callable[[], Any]]:
    """Open a KubernetesRuntime on the fake cluster (after the test made its objects);
    shut down at the end."""
    config_path = tmp_path / "wakegate.yaml"
    config_path.write_text(yaml.safe_dump({
        "runtime": "kubernetes",
        "kubernetes": {"kubeconfig": cluster.kubeconfig},
        "environments": {"production": {"min_replicas": 1, "max_replicas": 4}},
        "services": {},
    }))
    runtimes: list[KubernetesRuntime] = []

    async def open_runtime() -> tuple[KubernetesRuntime, Recorder]:
        runtime = KubernetesRuntime(load_config(config_path))
        events = Recorder()
        runtimes.append(runtime)
        await asyncio.wait_for(runtime.open(events), 20.0)
        return runtime, events

    yield open_runtime
    for runtime in runtimes:
        await runtime.shutdown(1.0)


def production(cluster: Cluster, replicas: int, **annotations: str) -> None:
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "hello-production", "annotations": annotations,
        "labels": {"wakegate.dev/environment": "production", "wakegate.dev/kind": "production"},
    }})
    cluster.service("hello-production", "hello", replicas=replicas, grace_seconds=1)


def live_pods(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in cluster.kube.list("Pod", "hello-production")
            if not p["metadata"].get("deletionTimestamp")}


async def pid_of(http: aiohttp.ClientSession, replica: Any) -> int:
    async with http.get(f"http://{replica.endpoint}/") as resp:
        assert resp.status == 200
        return int((await resp.json())["pid"])


async def test_a_running_deployment_scales_up_and_down_by_the_chosen_pod(
        cluster: Cluster, opened: Callable[[], Any]) -> None:
    production(cluster, replicas=1)
    runtime, events = await opened()
    first = (await until(lambda: events.appeared, 15.0, "the running replica"))[0]
    spec = events.specs[KEY]

    new = await runtime.start(spec, "1.0.0", 2)
    assert len(new) == 2, new
    assert cluster.replicas("hello-production", "hello") == 3
    replicas = [first, *new]
    assert len({r.pod for r in replicas}) == 3 and all(r.pod for r in replicas), replicas
    async with aiohttp.ClientSession() as http:
        pids = {r.pod: await pid_of(http, r) for r in replicas}
    assert len(set(pids.values())) == 3, "three processes answer"

    # Left alone, the ReplicaSet would remove the newest pod; the oldest is chosen.
    await runtime.stop([first], 5.0)
    assert cluster.replicas("hello-production", "hello") == 2
    assert first.exited.done()
    pods = live_pods(cluster)
    assert first.pod not in pods, "the chosen pod is the one deleted"
    assert set(pods) == {r.pod for r in new}
    assert all(DELETION_COST not in (p["metadata"].get("annotations") or {})
               for p in pods.values()), "only the chosen pod is marked"
    async with aiohttp.ClientSession() as http:
        assert {await pid_of(http, r) for r in new} == {pids[r.pod] for r in new}

    # And up again from there: only the new replicas come back.
    again = await runtime.start(spec, "1.0.0", 1)
    assert len(again) == 1 and again[0].pod not in {r.pod for r in new}, again
    assert cluster.replicas("hello-production", "hello") == 3


async def test_start_never_goes_above_max_replicas(cluster: Cluster,
                                                   opened: Callable[[], Any]) -> None:
    production(cluster, replicas=3)
    runtime, events = await opened()
    await until(lambda: len(events.appeared) == 3, 15.0, "the three running replicas")
    new = await runtime.start(events.specs[KEY], "1.0.0", 5)
    assert len(new) == 1, "max_replicas is 4"
    assert cluster.replicas("hello-production", "hello") == 4


def hpa(name: str, target: str, namespace: str = "hello-production") -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": target},
                 "minReplicas": 1, "maxReplicas": 3,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]},
    }


async def test_a_deployment_an_hpa_scales_is_left_to_it(
        cluster: Cluster, opened: Callable[[], Any], caplog: pytest.LogCaptureFixture) -> None:
    production(cluster, replicas=1)
    cluster.service("hello-production", "other", replicas=0)
    cluster.create(hpa("elsewhere", "not-ours"))  # an HPA of another Deployment
    caplog.set_level(logging.WARNING, logger="wakegate.kubernetes")
    runtime, events = await opened()
    hello, other = events.specs[KEY], events.specs[("production", "other")]
    assert not runtime.autoscaled_elsewhere(hello)

    cluster.create(hpa("hello", "hello"))
    await until(lambda: runtime.autoscaled_elsewhere(hello), 10.0, "the HPA to be seen")
    assert not runtime.autoscaled_elsewhere(other)
    # More passes over the cluster (a new instance), the same HPA: still said once.
    cluster.service("hello-production", "third", replicas=0)
    await until(lambda: ("production", "third") in events.specs, 10.0, "a third instance")
    said = [r.getMessage() for r in caplog.records if "HorizontalPodAutoscaler" in r.getMessage()]
    assert len(said) == 1, said
    assert "hello-production/hello" in said[0] and "leaves its replica count" in said[0]
    assert runtime.autoscaled_elsewhere(hello)


async def test_autoscale_settings_come_from_annotations(
        cluster: Cluster, opened: Callable[[], Any], caplog: pytest.LogCaptureFixture) -> None:
    production(cluster, replicas=0, **{
        "wakegate.dev/autoscale-target-concurrency": "50",
        "wakegate.dev/autoscale-window": "30s",
        "wakegate.dev/autoscale-scale-down-delay": "500ms",
    })
    cluster.service("hello-production", "tuned", annotations={
        "wakegate.dev/autoscale-target-utilization": "0.5",
        "wakegate.dev/autoscale-panic-window": "2s",
        "wakegate.dev/autoscale-panic-threshold": "3",
    })
    cluster.service("hello-production", "wrong", annotations={
        "wakegate.dev/autoscale-target-concurrency": "0",
        "wakegate.dev/autoscale-panic-threshold": "lots",
        "wakegate.dev/autoscale-windw": "10s",
        "wakegate.dev/autoscale-window": "1s",  # shorter than the panic window (6s)
    })
    caplog.set_level(logging.WARNING, logger="wakegate.kubernetes")
    _, events = await opened()

    environment = Autoscale(target_concurrency=50, window=30.0, scale_down_delay=0.5)
    assert events.specs[KEY].autoscale == environment
    assert events.specs[("production", "tuned")].autoscale == Autoscale(
        target_concurrency=50, target_utilization=0.5, window=30.0, panic_window=2.0,
        panic_threshold=3.0, scale_down_delay=0.5)
    assert events.specs[("production", "wrong")].autoscale == environment
    said = "\n".join(r.getMessage() for r in caplog.records)
    assert "deployment hello-production/wrong: the autoscale panic window (6s) is longer " \
        "than the window (1s) it is part of; ignored: wakegate.dev/autoscale-window" in said
    assert "wakegate.dev/autoscale-target-concurrency: must be at least 0.01" in said, said
    assert "wakegate.dev/autoscale-panic-threshold: bad number" in said, said
    assert "wakegate.dev/autoscale-windw: not an autoscale setting" in said, said


# --- the whole controller: scaling by load on Kubernetes (the approach of test_autoscale.py) ---


def staging(cluster: Cluster, **environment: Any) -> dict[str, Any]:
    """A staging environment (1..3 replicas) on the fake cluster, with short windows."""
    cluster.environment("hello-staging", "staging", "staging")
    cluster.service("hello-staging", "hello", replicas=1, grace_seconds=1)
    return {
        "runtime": "kubernetes", "kubernetes": cluster.settings(), "services": {},
        "environments": {"staging": {"kind": "staging", "max_replicas": 3,
                                     "scale_down_delay": "200ms",
                                     "autoscale": autoscale(), **environment}},
    }


async def test_scales_up_under_load_and_down_by_one_pod_on_kubernetes(
        cluster: Cluster, wakegate: Start) -> None:
    wg = wakegate(staging(cluster))
    replicas = Replicas(wg, "staging")
    await wait_for(lambda: replicas.poll() == (1, 1), DEADLINE, "the running replica")
    load = Load(wg, "staging", clients=3)
    try:
        await replicas.until(3, "three clients, a target of 1")
        assert cluster.replicas("hello-staging", "hello") == 3
        await load.remove(2)  # one client goes on: one replica is enough for it
        replicas.seen.clear()
        await replicas.until(1, "the load down to one client")
        await wait_for(lambda: len(cluster.pod_pids("hello-staging", "hello")) == 1,
                       DEADLINE, "the drained pods' processes gone")
    finally:
        await load.close()
    assert replicas.steps() == [3, 2, 1], replicas.seen
    assert cluster.replicas("hello-staging", "hello") == 1
    assert not load.failed(), load.failed()[:5]
    # The pod left is the replica the scaler kept (not the ReplicaSet's choice): it serves.
    async with aiohttp.ClientSession() as http:
        answer = await get(http, wg, "hello", "staging")
    assert answer.status == 200 and not answer.cold, answer
    assert [answer.body["pid"]] == cluster.pod_pids("hello-staging", "hello")


async def test_an_hpa_keeps_wakegate_from_scaling_by_load(cluster: Cluster,
                                                          wakegate: Start) -> None:
    config = staging(cluster)
    cluster.create(hpa("hello", "hello", namespace="hello-staging"))
    wg = wakegate(config)
    replicas = Replicas(wg, "staging")
    await wait_for(lambda: replicas.poll()[0] == 1, DEADLINE, "the running replica")
    load = Load(wg, "staging", clients=3)
    try:
        # Three clients on a target of 1 would want 3 replicas within a second or so.
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            await asyncio.to_thread(replicas.poll)
    finally:
        await load.close()
    assert replicas.most() == 1, replicas.seen
    assert cluster.replicas("hello-staging", "hello") == 1
    assert not load.failed(), load.failed()[:5]
    assert wg.stderr().count("HorizontalPodAutoscaler hello-staging/hello scales") == 1, \
        wg.stderr()[-2000:]
