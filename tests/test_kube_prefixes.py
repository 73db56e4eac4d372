"""Prefixes and `wakegate.dev/depends-on` on the Kubernetes runtime, against the fake API server.

An environment's prefix (its namespace's `wakegate.dev/prefix` label, else the
config's `prefix`, else its kind's default) is in the names of its objects and
in the image tags `deploy` sets; the objects are read back the way a user
reads them, with the real kubectl.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import aiohttp

from tests import kubectl

from .client import get, version_of
from .conftest import Wakegate, wait_until
from .kube_cluster import Cluster

Start = Callable[..., Wakegate]


def kube_config(cluster: Cluster, **environments: Any) -> dict[str, Any]:
    return {"runtime": "kubernetes", "kubernetes": cluster.settings(),
            "environments": environments, "services": {}}


def kubectl_json(cluster: Cluster, *args: str) -> Any:
    done = kubectl.run(*args, "-o", "json", kubeconfig=cluster.kubeconfig,
                       cache_dir=cluster.kube.directory / "kubectl-cache")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def image_of(cluster: Cluster, namespace: str, deployment: str) -> str:
    """The first container's image of a Deployment, as `kubectl get deployment -o json`
    shows it."""
    obj = kubectl_json(cluster, "get", "deployment", deployment, "-n", namespace)
    return str(obj["spec"]["template"]["spec"]["containers"][0]["image"])


async def test_deploy_sets_the_prefixed_image_tag(cluster: Cluster, wakegate: Start) -> None:
    """development's default prefix `dev`: `dev-hello`, tags `1.0.0-dev`."""
    cluster.environment("hello-dev", "development", "development")
    cluster.service("hello-dev", "dev-hello", instance="hello", version="1.0.0-dev")
    wg = wakegate(kube_config(cluster, development={"idle_timeout": "1h"}))
    row = wg.status()[("development", "hello")]
    # The version is the tag without the environment's prefix.
    assert (row["version"], row["prefix"], row["tag"]) == ("1.0.0", "dev", "1.0.0-dev"), row

    wg.cli("deploy", "hello", "1.2.0", "--env", "development", check=True)
    assert image_of(cluster, "hello-dev", "dev-hello") == "example/hello:1.2.0-dev"
    obj = kubectl_json(cluster, "get", "deployment", "dev-hello", "-n", "hello-dev")
    assert obj["metadata"]["annotations"]["wakegate.dev/version"] == "1.2.0"
    wait_until(lambda: wg.status()[("development", "hello")]["version"] == "1.2.0", 10.0,
               "the new version to be discovered")
    row = wg.status()[("development", "hello")]
    assert row["tag"] == "1.2.0-dev", row
    shown = wg.cli("status", check=True).stdout
    assert "1.2.0-dev" in shown, shown
    # The container is told the version, not the tag.
    assert await version_of(wg, "development") == "1.2.0"


async def test_the_namespace_label_and_the_config_set_the_prefix(cluster: Cluster,
                                                                 wakegate: Start) -> None:
    # A label beats the config; the config beats the kind's default.
    cluster.environment("hello-staging", "staging", "staging", prefix="qa")
    cluster.service("hello-staging", "qa-hello", instance="hello", version="1.0.0-qa",
                    replicas=1)
    cluster.environment("hello-private", "private", "private")
    cluster.service("hello-private", "pv-hello", instance="hello", version="1.0.0-pv")
    wg = wakegate(kube_config(cluster, staging={}, private={"prefix": "pv"}))
    assert wg.status()[("staging", "hello")]["prefix"] == "qa"
    wg.cli("deploy", "hello", "2.0.0", "--env", "staging", check=True)
    assert image_of(cluster, "hello-staging", "qa-hello") == "example/hello:2.0.0-qa"

    # The key Secret of a service is named with the prefix too.
    made = wg.cli("keys", "create", "hello", "--env", "private", check=True)
    key = made.stdout.strip().splitlines()[-1]
    secrets = kubectl_json(cluster, "get", "secrets", "-n", "hello-private",
                           "-l", "wakegate.dev/keys=true")
    assert [s["metadata"]["name"] for s in secrets["items"]] == ["wakegate-keys-pv-hello"]
    async with aiohttp.ClientSession() as http:
        allowed = await get(http, wg, "hello", "private", **{"X-API-Key": key})
    assert allowed.status == 200 and allowed.body["version"] == "1.0.0-pv", allowed
    (listed,) = json.loads(wg.cli("keys", "list", "--json", check=True).stdout)
    wg.cli("keys", "revoke", listed["id"], check=True)
    async with aiohttp.ClientSession() as http:
        denied = await get(http, wg, "hello", "private", **{"X-API-Key": key})
    assert denied.status == 401, denied


async def test_production_colours_carry_the_prefix(cluster: Cluster, wakegate: Start) -> None:
    """`prod-hello-blue` and `prod-hello-green`: a deploy goes to the idle colour with the
    tag `2.0.0-prod`."""
    cluster.environment("hello-prod", "production", "production")
    for colour in ("blue", "green"):
        cluster.service("hello-prod", f"prod-hello-{colour}", instance="hello",
                        version="1.0.0-prod", replicas=2 if colour == "blue" else 0)
    wg = wakegate(kube_config(cluster, production={"hold_timeout": "20s"}))
    wg.wait_state("production", "hello", "ready", timeout=15.0)
    assert wg.status()[("production", "hello")]["version"] == "1.0.0"
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    assert image_of(cluster, "hello-prod", "prod-hello-green") == "example/hello:2.0.0-prod"
    assert image_of(cluster, "hello-prod", "prod-hello-blue") == "example/hello:1.0.0-prod"
    releases = wg.cli("release", "status", "hello", check=True).stdout
    assert "2.0.0" in releases, releases


async def test_depends_on_annotation_wakes_the_dependency(cluster: Cluster,
                                                          wakegate: Start) -> None:
    cluster.environment("hello-demo", "demo", "demo")
    cluster.service("hello-demo", "db")
    cluster.service("hello-demo", "hello",
                    annotations={"wakegate.dev/depends-on": "db, Not_A_Label"})
    wg = wakegate(kube_config(cluster, demo={"idle_timeout": "1h"}))
    assert cluster.replicas("hello-demo", "db") == 0
    async with aiohttp.ClientSession() as http:
        first = await get(http, wg, "hello", "demo")
    assert first.status == 200 and first.cold, first
    # The dependency was woken with it, not by a request of its own.
    wait_until(lambda: wg.state("demo", "db") == "ready", 10.0, "db to be woken with hello")
    assert cluster.replicas("hello-demo", "db") == 1
    said = [line for line in wg.stderr().splitlines() if "Not_A_Label" in line]
    assert len(said) == 1 and "wakegate.dev/depends-on" in said[0], said
