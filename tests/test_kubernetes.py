"""The Kubernetes runtime against the fake API server, with the real kubernetes-asyncio client.

wakegate runs as a real process (`wakegate up` with `runtime: kubernetes`);
the fake cluster's kubelet runs the hello example as real processes on
loopback addresses and publishes them in EndpointSlices.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import yaml

from .client import fetch, get
from .conftest import REPO, Wakegate, wait_until
from .kube_cluster import Cluster

Start = Callable[..., Wakegate]




def kube_config(cluster: Cluster, **environments: Any) -> dict[str, Any]:
    return {
        "runtime": "kubernetes",
        "kubernetes": cluster.settings(),
        "environments": environments or {"demo": {"idle_timeout": "1s"}},
        "services": {},
    }


def demo_cluster(cluster: Cluster, **annotations: str) -> None:
    cluster.environment("hello-demo", "demo", "demo")
    cluster.service("hello-demo", "hello", annotations=annotations)


def wait_replicas(cluster: Cluster, namespace: str, name: str, n: int, timeout: float) -> None:
    wait_until(lambda: cluster.replicas(namespace, name) == n, timeout,
               f"{namespace}/{name} to be scaled to {n}")


# --- waking and sleeping ---


async def test_cold_start_scales_up_and_idle_scales_to_zero(cluster: Cluster,
                                                             wakegate: Start) -> None:
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster))
    assert wg.state("demo", "hello") == "sleeping"
    assert cluster.replicas("hello-demo", "hello") == 0
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(get(http, wg, "hello", "demo") for _ in range(20)))
        for a in answers:
            assert a.status == 200, a
            assert a.cold, a
            assert a.body["version"] == "1.0.0", a
        assert cluster.replicas("hello-demo", "hello") == 1, "exactly one replica for 20 waiters"
        assert len(cluster.pod_pids("hello-demo", "hello")) == 1
        warm = await get(http, wg, "hello", "demo")
        assert warm.status == 200 and not warm.cold, warm
    # idle_timeout 1s: scaled back to zero, its pod gone.
    wg.wait_state("demo", "hello", "sleeping", timeout=10.0)
    wait_replicas(cluster, "hello-demo", "hello", 0, 5.0)
    wait_until(lambda: not cluster.pod_pids("hello-demo", "hello"), 5.0, "the pod to stop")
    async with aiohttp.ClientSession() as http:
        again = await get(http, wg, "hello", "demo")
    assert again.status == 200 and again.cold, again


async def test_a_deployment_scaled_by_hand_is_respected(cluster: Cluster, wakegate: Start) -> None:
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster, demo={"idle_timeout": "1h"}))
    cluster.scale("hello-demo", "hello", 2)
    wait_until(lambda: wg.status()[("demo", "hello")]["replicas"] == 2, 10.0,
               "wakegate to see both replicas scaled by hand")
    assert wg.state("demo", "hello") == "ready"
    async with aiohttp.ClientSession() as http:
        answers = [await get(http, wg, "hello", "demo") for _ in range(6)]
    assert all(a.status == 200 and not a.cold for a in answers), answers
    assert len({a.body["pid"] for a in answers}) == 2, "the load goes to both endpoints"
    assert cluster.replicas("hello-demo", "hello") == 2, "wakegate did not scale it back"

    cluster.scale("hello-demo", "hello", 0)
    wg.wait_state("demo", "hello", "sleeping", timeout=10.0)


async def test_new_instances_are_discovered_and_annotations_override(cluster: Cluster,
                                                                     wakegate: Start) -> None:
    cluster.environment("hello-demo", "demo", "demo")
    wg = wakegate(kube_config(cluster, demo={"idle_timeout": "1h"}))
    assert ("demo", "hello") not in wg.status()
    cluster.service("hello-demo", "hello", annotations={"wakegate.dev/idle-timeout": "500ms"})
    wait_until(lambda: ("demo", "hello") in wg.status(), 10.0, "the new instance to appear")
    row = wg.status()[("demo", "hello")]
    assert row["idle_timeout"] == 0.5, row
    async with aiohttp.ClientSession() as http:
        first = await get(http, wg, "hello", "demo")
    assert first.status == 200 and first.cold
    wg.wait_state("demo", "hello", "sleeping", timeout=10.0)


async def test_watches_survive_a_cut_connection_and_410_gone(cluster: Cluster,
                                                            wakegate: Start) -> None:
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster, demo={"idle_timeout": "1h"}))
    # The API server loses its event history and every watch connection.
    cluster.call(cluster.kube.compact)
    cluster.call(cluster.kube.drop_watches)
    cluster.environment("other-demo", "staging", "staging")
    cluster.service("other-demo", "hello", replicas=1)
    wait_until(lambda: wg.status().get(("staging", "hello"), {}).get("state") == "ready",
               15.0, "the instance created after the 410 to be seen, ready")
    # The stale cache was not acted on: the demo instance is still asleep at 0.
    assert wg.state("demo", "hello") == "sleeping"
    assert cluster.replicas("hello-demo", "hello") == 0
    async with aiohttp.ClientSession() as http:
        a = await get(http, wg, "hello", "staging")
    assert a.status == 200 and not a.cold, a


async def test_api_errors_are_retried(cluster: Cluster, wakegate: Start) -> None:
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster))
    cluster.call(cluster.kube.fail_next, 1, 500)
    async with aiohttp.ClientSession() as http:
        a = await get(http, wg, "hello", "demo")
    # One failed API call may fail one activation (503, retry); never a hang.
    assert a.status in (200, 503), a
    async with aiohttp.ClientSession() as http:
        b = await get(http, wg, "hello", "demo")
    assert b.status == 200, b


# --- keys, activity, leadership ---


async def test_keys_live_in_a_secret(cluster: Cluster, wakegate: Start) -> None:
    cluster.environment("hello-private", "private", "private")
    cluster.service("hello-private", "hello")
    wg = wakegate(kube_config(cluster, private={"idle_timeout": "1h"}))
    made = wg.cli("keys", "create", "hello", "--env", "private", check=True)
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("wg_")
    secret = cluster.get("Secret", "hello-private", "wakegate-keys-hello")
    assert secret is not None
    stored = {base64.b64decode(v).decode() for v in secret["data"].values()}
    assert stored == {hashlib.sha256(key.encode()).hexdigest()}, "only the digest is stored"
    assert key not in str(secret)
    async with aiohttp.ClientSession() as http:
        denied = await get(http, wg, "hello", "private")
        assert denied.status == 401, denied
        allowed = await get(http, wg, "hello", "private", **{"X-API-Key": key})
        assert allowed.status == 200, allowed


async def test_last_activity_survives_a_controller_restart(cluster: Cluster,
                                                           wakegate: Start) -> None:
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster, demo={"idle_timeout": "1h"}))
    async with aiohttp.ClientSession() as http:
        assert (await get(http, wg, "hello", "demo")).status == 200
    requested_at = time.time()

    def annotated() -> float | None:
        dep = cluster.get("Deployment", "hello-demo", "hello") or {}
        return (dep["metadata"].get("annotations") or {}).get("wakegate.dev/last-activity")

    wait_until(annotated, 5.0, "the last activity to be written on the Deployment")
    wg.stop()
    # The controller going away does not stop the instance.
    assert cluster.replicas("hello-demo", "hello") == 1
    wg.start()
    row = wg.status()[("demo", "hello")]
    assert row["state"] == "ready", row
    # The idle clock goes on from the persisted activity, not from the restart.
    assert row["idle_seconds"] >= (time.time() - requested_at) - 1.0, row


async def test_leader_failover(cluster: Cluster, wakegate: Start) -> None:
    """Two controllers: one acts; SIGKILL it and the other leads within the lease duration."""
    demo_cluster(cluster)
    first = wakegate(kube_config(cluster), name="first")
    second_config = kube_config(cluster)
    second = Wakegate(first.dir.parent, second_config, name="second")
    started = threading.Event()
    errors: list[BaseException] = []

    def start_second() -> None:
        try:
            second.start()
            started.set()
        except BaseException as exc:  # reported by the test below
            errors.append(exc)

    thread = threading.Thread(target=start_second, daemon=True)
    thread.start()
    try:
        time.sleep(0)  # let it begin
        wait_until(lambda: "waits to become the leader" in second.stderr(), 10.0,
                   "the second controller to wait for the lease")
        assert not started.is_set(), "two leaders at once"
        assert first.proc is not None
        killed_at = time.monotonic()
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        wait_until(started.is_set, 10.0, "the second controller to take over")
        failover = time.monotonic() - killed_at
        assert failover < 1.0 + 1.5, f"took over after {failover:.2f}s (lease 1s)"
        async with aiohttp.ClientSession() as http:
            a = await get(http, second, "hello", "demo")
        assert a.status == 200 and a.cold, a
    finally:
        thread.join(30)
        with contextlib.suppress(Exception):
            second.stop()
    assert not errors, errors


async def test_a_stopped_controller_releases_its_lease(cluster: Cluster, wakegate: Start) -> None:
    """A clean stop gives the Lease up, so the next controller need not wait for it to expire."""
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster))
    wg.stop()
    lease = cluster.get("Lease", "wakegate-system", "wakegate-controller")
    assert lease is not None
    assert not lease["spec"].get("holderIdentity"), f"the Lease is still held: {lease['spec']}"


# --- RBAC: the manifests grant exactly what the code uses ---


def _granted() -> set[tuple[str, str, str]]:
    granted: set[tuple[str, str, str]] = set()
    for path in (REPO / "manifests").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") not in ("ClusterRole", "Role"):
                continue
            if doc.get("metadata", {}).get("name", "").startswith("wakegate-controller"):
                for rule in doc.get("rules", []):
                    for group in rule["apiGroups"]:
                        for resource in rule["resources"]:
                            for verb in rule["verbs"]:
                                granted.add((group, resource, verb))
    return granted


async def test_rbac_grants_exactly_the_calls_the_controller_makes(cluster: Cluster,
                                                                  wakegate: Start) -> None:
    """Every code path that talks to the API server, then the server's request log vs RBAC."""
    cluster.environment("hello-private", "private", "private")
    cluster.service("hello-private", "hello")
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster))
    wg.cli("keys", "create", "hello", "--env", "private", check=True)
    wg.cli("keys", "create", "hello", "--env", "private", check=True)  # update, not create
    async with aiohttp.ClientSession() as http:
        assert (await get(http, wg, "hello", "demo")).status == 200
    wg.wait_state("demo", "hello", "sleeping", timeout=10.0)
    # An ephemeral environment: its namespace made, extended and deleted.
    wg.cli("env", "create", "pr-1", "--from", "demo", check=True)
    wg.cli("env", "extend", "pr-1", "--ttl", "4h", check=True)
    wg.cli("env", "delete", "pr-1", check=True)
    wg.stop()  # releases the lease
    seen = {(group, resource + (f"/{sub}" if sub else ""), verb)
            for group, resource, sub, verb in cluster.call(lambda: set(
                cluster.kube.requests_seen))}
    # The test made its objects through the server's store, not over HTTP: every
    # request in the log is the controller's (or the CLI's, which goes through it).
    granted = _granted()
    assert granted, "no wakegate-controller ClusterRole/Role in manifests/"
    assert seen <= granted, f"calls the manifests do not allow: {sorted(seen - granted)}"
    assert granted <= seen, f"verbs granted but never used: {sorted(granted - seen)}"


# --- split mode on Kubernetes: a controller that dies mid-activation ---


async def test_controller_killed_mid_activation_held_requests_still_answered(
    cluster: Cluster, split: Callable[..., Any]
) -> None:
    cluster.environment("hello-demo", "demo", "demo")
    cluster.service("hello-demo", "hello", env={"HELLO_STARTUP_DELAY_MS": "1500"})
    config = kube_config(cluster, demo={"idle_timeout": "1h", "hold_timeout": "20s"})
    deployment = split(config, proxies=2)
    base = deployment.proxies[0].base
    host = Wakegate.host("hello", "demo")
    async with aiohttp.ClientSession() as http:
        held = [asyncio.ensure_future(fetch(http, base, host)) for _ in range(5)]
        # The leader has scaled the Deployment up; the pod is still starting.
        await asyncio.to_thread(wait_replicas, cluster, "hello-demo", "hello", 1, 10.0)
        assert not any(task.done() for task in held)
        await asyncio.to_thread(deployment.restart_controller, signal.SIGKILL)
        answers = await asyncio.wait_for(asyncio.gather(*held), 20.0)
    for a in answers:
        assert a.status == 200, a
        assert a.cold, a
    assert cluster.replicas("hello-demo", "hello") == 1, "the new leader did not scale again"
    assert deployment.state("demo", "hello") == "ready"


async def test_push_sets_the_version_on_the_deployment(cluster: Cluster, wakegate: Start) -> None:
    cluster.environment("hello-demo", "demo", "demo")
    cluster.service("hello-demo", "hello")
    wg = wakegate(kube_config(cluster, demo={"idle_timeout": "1h"}))
    async with aiohttp.ClientSession() as http:
        assert (await get(http, wg, "hello", "demo")).body["version"] == "1.0.0"
    wg.cli("deploy", "hello", "1.2.0", "--env", "demo", check=True)
    dep = cluster.get("Deployment", "hello-demo", "hello")
    assert dep is not None
    assert dep["metadata"]["annotations"]["wakegate.dev/version"] == "1.2.0"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example/hello:1.2.0"
    wait_until(lambda: wg.status()[("demo", "hello")]["version"] == "1.2.0", 10.0,
               "the new version to be discovered")

    async def answered_by_new() -> bool:
        async with aiohttp.ClientSession() as http:
            a = await get(http, wg, "hello", "demo")
        return a.status == 200 and a.body["version"] == "1.2.0"

    # The Deployment rolls its pod; requests are answered throughout.
    deadline = time.monotonic() + 15
    while not await answered_by_new():
        assert time.monotonic() < deadline, "the rolled pod never answered"
        await asyncio.sleep(0.05)


async def test_a_controller_that_loses_its_lease_stops_acting(cluster: Cluster,
                                                             wakegate: Start) -> None:
    demo_cluster(cluster)
    wg = wakegate(kube_config(cluster))
    path = "/apis/coordination.k8s.io/v1/namespaces/wakegate-system/leases/wakegate-controller"

    def take_the_lease() -> bool:
        lease = cluster.get("Lease", "wakegate-system", "wakegate-controller")
        assert lease is not None
        lease["spec"]["holderIdentity"] = "another-controller"
        lease["spec"]["leaseDurationSeconds"] = 30
        lease["spec"]["renewTime"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return cluster.put(path, lease) == 200  # 409: the controller renewed meanwhile

    wait_until(take_the_lease, 5.0, "another holder to take the Lease")
    assert wg.proc is not None
    proc = wg.proc
    wait_until(lambda: proc.poll() is not None, 5.0, "the controller to stop")
    assert "lost leadership" in wg.stderr()
    holder = cluster.get("Lease", "wakegate-system", "wakegate-controller")
    assert holder is not None and holder["spec"]["holderIdentity"] == "another-controller", \
        "the stopping controller did not take the Lease back"
