"""Blue/green releases on the Kubernetes runtime, against the fake API server.

The colours are the Deployments `hello-blue` and `hello-green` (each with its
Service) in a production namespace; the fake cluster's kubelet runs them as
real processes. Which colour is live is read back from the Deployments.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from .client import switch_under_load, version_of
from .conftest import Wakegate, wait_until
from .kube_cluster import Cluster

Start = Callable[..., Wakegate]
NS = "hello-prod"



def production(cluster: Cluster, scale_down_delay: str = "30s") -> dict[str, Any]:
    # Set up as before prefixes: no prefix in names and image tags (test_kube_prefixes.py).
    cluster.environment(NS, "production", "production", prefix="")
    for colour in ("blue", "green"):
        cluster.service(NS, f"hello-{colour}", instance="hello", version="1.0.0")
    return {
        "runtime": "kubernetes", "kubernetes": cluster.settings(), "services": {},
        "environments": {"production": {"scale_down_delay": scale_down_delay,
                                        "hold_timeout": "20s"}},
    }


def annotations(cluster: Cluster, colour: str) -> dict[str, str]:
    obj = cluster.get("Deployment", NS, f"hello-{colour}")
    assert obj is not None
    return dict(obj["metadata"].get("annotations") or {})


def wait_replicas(cluster: Cluster, colour: str, n: int, timeout: float = 15.0) -> None:
    wait_until(lambda: cluster.replicas(NS, f"hello-{colour}") == n, timeout,
               f"hello-{colour} to be scaled to {n}")


async def test_deploy_promote_rollback_under_load(cluster: Cluster, wakegate: Start) -> None:
    wg = wakegate(production(cluster, scale_down_delay="1s"))
    assert cluster.replicas(NS, "hello-blue") == 2, "blue is live when neither was switched"
    assert cluster.replicas(NS, "hello-green") == 0
    assert await version_of(wg, "production") == "1.0.0"
    assert await version_of(wg, "prerelease") == "1.0.0", "no preview: the live colour"

    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    assert cluster.replicas(NS, "hello-green") == 2, "the preview runs at production size"
    green = cluster.get("Deployment", NS, "hello-green")
    assert green is not None
    assert green["spec"]["template"]["spec"]["containers"][0]["image"] == "example/hello:2.0.0"
    assert await version_of(wg, "prerelease") == "2.0.0"
    assert await version_of(wg, "production") == "1.0.0", "the preview is not live yet"
    status = wg.cli("release", "status", "hello", check=True).stdout
    assert "live colour blue" in status and "green  preview" in status, status

    host = wg.host("hello", "production")
    seen = await switch_under_load(
        wg.base, host, lambda: wg.cli("release", "promote", "hello", check=True))
    print(f"kubernetes promote: {len(seen.answers)} requests, {len(seen.failed())} failed")
    assert len(seen.answers) >= 2000
    assert not seen.failed(), seen.failed()[:5]
    assert seen.versions_after_switch() == {"2.0.0"}
    promoted = annotations(cluster, "green")
    assert promoted["wakegate.dev/release-live-by"] == "promote", promoted
    assert wg.metric("wakegate_release_active", environment="production", service="hello",
                     colour="green") == 1.0
    # The old colour drains for scale_down_delay, then goes to zero.
    wait_replicas(cluster, "blue", 0)

    # Rollback to the colour scaled down: held like a cold start, never refused.
    seen = await switch_under_load(
        wg.base, host, lambda: wg.cli("release", "rollback", "hello", check=True),
        before=500, after=1000)
    print(f"kubernetes rollback: {len(seen.answers)} requests, {len(seen.failed())} failed")
    assert not seen.failed(), seen.failed()[:5]
    assert seen.versions_after_switch() == {"1.0.0"}
    assert cluster.replicas(NS, "hello-blue") == 2
    again = wg.cli("release", "rollback", "hello")
    assert again.returncode == 2 and "already rolled back" in again.stderr, again.stderr
    assert await version_of(wg, "production") == "1.0.0"


async def test_a_restarted_controller_reads_the_release_from_the_cluster(
        cluster: Cluster, wakegate: Start) -> None:
    wg = wakegate(production(cluster, scale_down_delay="2s"))
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    wg.stop(sig=signal.SIGKILL)  # between "preview ready" and "switch"
    wg.start()
    status = wg.api("/v1/release/status?service=hello")
    assert status["live"] == "blue", status
    assert status["colours"]["green"]["role"] == "preview", status
    assert await version_of(wg, "prerelease") == "2.0.0", "the preview kept running"
    # The deploy can be repeated (nothing to do), and concurrent promotes: one wins.
    out = wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True).stdout
    assert "nothing to do" in out, out
    results = await asyncio.gather(*(asyncio.to_thread(wg.cli, "release", "promote", "hello")
                                     for _ in range(4)))
    assert sum(r.returncode == 0 for r in results) == 1, [r.stderr for r in results]
    assert await version_of(wg, "production") == "2.0.0"

    # Killed right after the switch: the next controller scales blue down on time.
    wg.stop(sig=signal.SIGKILL)
    assert cluster.replicas(NS, "hello-blue") == 2
    wg.start()
    assert wg.api("/v1/release/status?service=hello")["live"] == "green"
    assert await version_of(wg, "production") == "2.0.0"
    wait_replicas(cluster, "blue", 0)


async def test_blue_green_needs_both_colours(cluster: Cluster, wakegate: Start) -> None:
    cluster.environment(NS, "production", "production")
    cluster.service(NS, "hello", version="1.0.0")
    wg = wakegate({"runtime": "kubernetes", "kubernetes": cluster.settings(), "services": {},
                   "environments": {"production": {}}})
    refused = wg.cli("deploy", "hello", "2.0.0", "--env", "production")
    assert refused.returncode == 2, refused
    assert "no blue/green Deployments: create hello-blue and hello-green" in refused.stderr
    dep = cluster.get("Deployment", NS, "hello")
    assert dep is not None
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "example/hello:1.0.0"
    assert await version_of(wg, "production") == "1.0.0"
