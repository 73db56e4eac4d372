"""Ephemeral environments on the Kubernetes runtime: a namespace each, against the fake API server.

`wakegate env create` (a real controller process, `runtime: kubernetes`) makes
the namespace and copies of the source's Deployments and Services at 0
replicas; the first request wakes a copy; at expiry or `env delete` the
namespace is deleted. What is made is read back with the real kubectl, as a
user would check it. The fake empties a deleted namespace after 0.3 s
(tests/kube/README.md) instead of a real cluster's 5 s.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from tests import kubectl

from .client import get
from .conftest import Wakegate, wait_until
from .kube_cluster import Cluster
from .procs import alive

Start = Callable[..., Wakegate]
SOURCE_NS = "hello-demo"


def kubectl_run(cluster: Cluster, *args: str) -> Any:
    return kubectl.run(*args, kubeconfig=cluster.kubeconfig,
                       cache_dir=cluster.kube.directory / "kubectl-cache")


def kubectl_json(cluster: Cluster, *args: str) -> Any:
    done = kubectl_run(cluster, *args, "-o", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def namespaces_of(cluster: Cluster, environment: str) -> list[dict[str, Any]]:
    """The namespaces labelled as this environment, as `kubectl get namespaces -l` lists
    them (one being deleted included)."""
    found = kubectl_json(cluster, "get", "namespaces", "-l",
                         f"wakegate.dev/environment={environment}")
    return list(found["items"])


def source(cluster: Cluster, **demo: Any) -> dict[str, Any]:
    """demo with hello (depending on db) and db; the fake empties namespaces fast."""
    cluster.call(cluster.kube.set_namespace_deletion_grace, 0.3)
    cluster.environment(SOURCE_NS, "demo", "demo")
    cluster.service(SOURCE_NS, "db")
    cluster.service(SOURCE_NS, "hello", annotations={"wakegate.dev/depends-on": "db",
                                                     "wakegate.dev/idle-timeout": "1h"})
    return {"runtime": "kubernetes", "kubernetes": cluster.settings(), "services": {},
            "environments": {"demo": {"idle_timeout": "1h", **demo}},
            "ephemeral": {"idle_timeout": "1s"}}


def create(wg: Wakegate, name: str, *args: str) -> str:
    made = wg.cli("env", "create", name, "--from", "demo", *args)
    assert made.returncode == 0, made.stderr
    return made.stdout


def gone(cluster: Cluster, environment: str) -> bool:
    return not namespaces_of(cluster, environment)


async def test_create_wake_sleep_and_expire(cluster: Cluster, wakegate: Start) -> None:
    wg = wakegate(source(cluster))
    began = time.monotonic()
    create(wg, "pr-1", "--ttl", "6s", "--set", "hello=1.2.0")
    # The namespace: labelled as the environment, its record in annotations.
    (ns,) = namespaces_of(cluster, "pr-1")
    meta = ns["metadata"]
    assert meta["labels"]["wakegate.dev/kind"] == "ephemeral"
    notes = meta["annotations"]
    assert notes["wakegate.dev/source"] == "demo"
    assert notes["wakegate.dev/access"] == "public"
    assert notes["wakegate.dev/versions"] == "db=1.0.0,hello=1.2.0"
    assert notes["wakegate.dev/expires-at"].endswith("Z")
    namespace = meta["name"]
    # The copies: named after the service, asleep, at the requested version.
    deployments = {d["metadata"]["name"]: d for d in kubectl_json(
        cluster, "get", "deployments", "-n", namespace)["items"]}
    assert set(deployments) == {"db", "hello"}
    hello = deployments["hello"]
    assert hello["spec"]["replicas"] == 0
    assert hello["spec"]["template"]["spec"]["containers"][0]["image"] == "example/hello:1.2.0"
    assert hello["metadata"]["annotations"]["wakegate.dev/version"] == "1.2.0"
    assert hello["metadata"]["annotations"]["wakegate.dev/depends-on"] == "db"
    assert "wakegate.dev/idle-timeout" not in hello["metadata"]["annotations"]
    services = kubectl_json(cluster, "get", "services", "-n", namespace)["items"]
    assert sorted(s["metadata"]["name"] for s in services) == ["db", "hello"]
    assert wg.state("pr-1", "hello") == "sleeping"

    async with aiohttp.ClientSession() as http:
        first = await get(http, wg, "hello", "pr-1")
        assert first.status == 200 and first.cold, first
        assert first.body["version"] == "1.2.0"
        print(f"create -> first answer: {time.monotonic() - began:.2f}s")
        # Its dependency was woken with it; the source was left alone.
        wait_until(lambda: cluster.replicas(namespace, "db") == 1, 10.0, "db to wake")
        assert cluster.replicas(SOURCE_NS, "hello") == 0
        # The ephemeral idle timeout (1s): asleep again, then woken again.
        wg.wait_state("pr-1", "hello", "sleeping", timeout=10.0)
        again = await get(http, wg, "hello", "pr-1")
        assert again.status == 200 and again.cold, again

        # Expiry: the namespace is deleted, then gone; the name routes nowhere.
        expires = json.loads(wg.cli("env", "list", "--json", check=True).stdout)
        (entry,) = [e for e in expires if e["name"] == "pr-1"]
        wait_until(lambda: gone(cluster, "pr-1"), entry["expires"] - time.time() + 15.0,
                   "the expired environment's namespace to be gone")
        print(f"expiry -> all gone: {time.time() - entry['expires']:.2f}s")
        after = await get(http, wg, "hello", "pr-1")
    assert after.status == 404 and after.body["error"] == "no_route", after
    assert ("pr-1", "hello") not in wg.status()
    # The source is untouched.
    assert kubectl_run(cluster, "get", "deployment", "hello", "-n", SOURCE_NS).returncode == 0


async def test_api_key_extend_and_delete(cluster: Cluster, wakegate: Start) -> None:
    wg = wakegate(source(cluster))
    out = create(wg, "pr-2", "--access", "api_key")
    key = out.strip().splitlines()[-1]
    assert key.startswith("wg_")
    (ns,) = namespaces_of(cluster, "pr-2")
    namespace = ns["metadata"]["name"]
    # One key for every service: its digest in each service's Secret.
    secrets = kubectl_json(cluster, "get", "secrets", "-n", namespace, "-l",
                           "wakegate.dev/keys=true")["items"]
    assert sorted(s["metadata"]["name"] for s in secrets) == [
        "wakegate-keys-db", "wakegate-keys-hello"]
    async with aiohttp.ClientSession() as http:
        denied = await get(http, wg, "hello", "pr-2")
        assert denied.status == 401, denied
        for service in ("hello", "db"):
            allowed = await get(http, wg, service, "pr-2", **{"X-API-Key": key})
            assert allowed.status == 200, allowed

    # Revoked by its id: gone from every Secret that held it.
    (listed,) = {k["id"] for k in json.loads(wg.cli("keys", "list", "--json",
                                                    check=True).stdout)
                 if k["environment"] == "pr-2"}
    wg.cli("keys", "revoke", listed, check=True)
    async with aiohttp.ClientSession() as http:
        for service in ("hello", "db"):
            revoked = await get(http, wg, service, "pr-2", **{"X-API-Key": key})
            assert revoked.status == 401, revoked

    before = ns["metadata"]["annotations"]["wakegate.dev/expires-at"]
    wg.cli("env", "extend", "pr-2", "--ttl", "48h", check=True)
    (ns,) = namespaces_of(cluster, "pr-2")
    after = ns["metadata"]["annotations"]["wakegate.dev/expires-at"]
    assert after > before, (before, after)

    deleted = wg.cli("env", "delete", "pr-2", check=True)
    assert "deleted" in deleted.stdout
    # Accepted by the API server when the command returns: being deleted, or gone.
    left = namespaces_of(cluster, "pr-2")
    assert all(n["metadata"].get("deletionTimestamp") for n in left), left
    wait_until(lambda: gone(cluster, "pr-2"), 10.0, "the namespace to be gone")
    assert kubectl_run(cluster, "get", "namespace", namespace).returncode != 0
    async with aiohttp.ClientSession() as http:
        a = await get(http, wg, "hello", "pr-2")
    assert a.status == 404 and a.body["error"] == "no_route", a
    # The name can be used again at once.
    create(wg, "pr-2")
    assert wg.state("pr-2", "hello") == "sleeping"


async def test_restart_between_create_and_expiry(cluster: Cluster, wakegate: Start) -> None:
    wg = wakegate(source(cluster))
    create(wg, "pr-3", "--ttl", "5s")
    wg.stop()
    wg.start()
    # The environment and its expiry came back from the namespace.
    listed = {e["name"]: e for e in json.loads(wg.cli("env", "list", "--json",
                                                      check=True).stdout)}
    assert listed["pr-3"]["kind"] == "ephemeral" and listed["pr-3"]["source"] == "demo"
    async with aiohttp.ClientSession() as http:
        a = await get(http, wg, "hello", "pr-3")
    assert a.status == 200 and a.cold, a
    wait_until(lambda: gone(cluster, "pr-3"), 20.0, "the namespace to be gone at expiry")
    assert ("pr-3", "hello") not in wg.status()


async def test_a_namespace_being_deleted_is_no_environment(cluster: Cluster,
                                                           wakegate: Start) -> None:
    """Deleted by hand with kubectl: its instances go at once, before it is emptied."""
    wg = wakegate(source(cluster))
    cluster.call(cluster.kube.set_namespace_deletion_grace, 30.0)
    create(wg, "pr-4")
    (ns,) = namespaces_of(cluster, "pr-4")
    done = kubectl_run(cluster, "delete", "namespace", ns["metadata"]["name"], "--wait=false")
    assert done.returncode == 0, done.stderr
    wait_until(lambda: ("pr-4", "hello") not in wg.status(), 10.0,
               "the instances of the namespace being deleted to go")
    (ns,) = namespaces_of(cluster, "pr-4")  # still there, being emptied
    assert ns["metadata"].get("deletionTimestamp")
    listed = json.loads(wg.cli("env", "list", "--json", check=True).stdout)
    assert "pr-4" not in {e["name"] for e in listed}


async def test_a_failed_create_leaves_nothing(cluster: Cluster, wakegate: Start) -> None:
    """The API server refuses a copy (here: the source's Service is gone): the namespace is
    deleted again and the command says why."""
    wg = wakegate(source(cluster))
    done = kubectl_run(cluster, "delete", "service", "db", "-n", SOURCE_NS)
    assert done.returncode == 0, done.stderr
    failed = wg.cli("env", "create", "pr-5", "--from", "demo")
    assert failed.returncode != 0
    assert 'services "db" not found' in failed.stderr, failed.stderr
    wait_until(lambda: gone(cluster, "pr-5"), 10.0, "the half-made namespace to be gone")
    assert "pr-5" not in {e["name"] for e in json.loads(
        wg.cli("env", "list", "--json", check=True).stdout)}


DRAIN = 2.0  # the source's scale_down_delay: the ephemeral environment's drain timeout


async def test_expiry_with_a_held_request_and_a_websocket(cluster: Cluster,
                                                          wakegate: Start) -> None:
    config = source(cluster, scale_down_delay=f"{DRAIN}s", hold_timeout="20s")
    cluster.service(SOURCE_NS, "slow", env={"HELLO_STARTUP_DELAY_MS": "1500"})
    wg = wakegate(config)
    create(wg, "pr-6", "--ttl", "1h")
    (ns,) = namespaces_of(cluster, "pr-6")
    namespace = ns["metadata"]["name"]
    async with aiohttp.ClientSession() as http, http.ws_connect(
        wg.base + "/ws", headers={"Host": wg.host("hello", "pr-6")},
    ) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=10)).data == "before"
        ws_pid = (await get(http, wg, "hello", "pr-6")).body["pid"]
        held = asyncio.ensure_future(get(http, wg, "slow", "pr-6"))
        await asyncio.to_thread(wg.wait_state, "pr-6", "slow", "starting", 5.0)
        status, extended, _ = await asyncio.to_thread(
            wg.call, "POST", "/v1/environments/pr-6/extend", {"ttl": "1s"})
        assert status == 200, extended
        expires = extended["expires"]  # epoch seconds, as the namespace's annotation has it
        answer = await asyncio.wait_for(held, 10.0)
        assert (answer.status, answer.body["error"]) == (404, "no_route"), answer
        assert time.time() - expires < 1.5, "the held request was not answered at once"
        # In flight: the WebSocket gets the drain timeout, then its pod is stopped.
        await ws.send_str("during the drain")
        assert (await ws.receive(timeout=5)).data == "during the drain"
        closed = await ws.receive(timeout=DRAIN + 15)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                               aiohttp.WSMsgType.CLOSING), closed
        assert time.time() - expires >= DRAIN - 0.3, "closed without a drain"
    await asyncio.to_thread(wait_until, lambda: gone(cluster, "pr-6"), 15.0,
                            "the namespace to be gone")
    assert not alive(ws_pid), "the pod's process is stopped"
    assert not cluster.kube.list("Pod", namespace)
    assert cluster.replicas(SOURCE_NS, "slow") == 0 and cluster.replicas(SOURCE_NS, "hello") == 0


async def test_a_namespace_claiming_another_environment_takes_nothing(
    cluster: Cluster, wakegate: Start,
) -> None:
    """Made by hand, labelled as an ephemeral `qa` (public, its own pod, long expired): the
    qa environment keeps its routes, and the impostor is neither served, listed nor expired."""
    config = source(cluster)
    config["environments"]["qa"] = {"kind": "demo", "idle_timeout": "1h"}
    cluster.environment("qa-ns", "qa", "demo")
    cluster.service("qa-ns", "hello")
    wg = wakegate(config)
    cluster.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {
        "name": "impostor",
        "labels": {"wakegate.dev/environment": "qa", "wakegate.dev/kind": "ephemeral"},
        "annotations": {"wakegate.dev/source": "demo", "wakegate.dev/access": "public",
                        "wakegate.dev/created-at": "2026-01-01T00:00:00Z",
                        "wakegate.dev/expires-at": "2026-01-01T00:00:01Z",
                        "wakegate.dev/versions": "hello=6.6.6"}}})
    cluster.service("impostor", "hello", version="6.6.6")
    wait_until(lambda: "ephemeral environment 'qa' has the name of another environment"
               in wg.stderr(), 10.0, "the impostor to be seen and refused")
    async with aiohttp.ClientSession() as http:
        answer = await get(http, wg, "hello", "qa")
    assert answer.status == 200 and answer.body["version"] == "1.0.0", answer
    listed = json.loads(wg.cli("env", "list", "--json", check=True).stdout)
    assert [e["kind"] for e in listed if e["name"] == "qa"] == ["demo"]
    assert wg.status()[("qa", "hello")]["state"] == "ready", "its instance was not taken"
    assert {ns["metadata"]["name"] for ns in namespaces_of(cluster, "qa")} == \
        {"qa-ns", "impostor"}, "the impostor is not deleted by wakegate either"
