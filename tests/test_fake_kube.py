"""The fake Kubernetes API server, exercised only through the real kubernetes_asyncio client.

If these pass, code written against kubernetes_asyncio sees the fake as it would
see a real cluster: the same paths, verbs, status codes, Status bodies, watch
streams (including 410 Expired) and the same EndpointSlices for real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from tests.conftest import RUN_MARKER
from tests.kube import ApiError, FakeKube
from tests.kube.fixtures import fake_kube  # noqa: F401
from tests.procs import processes_with

DEADLINE = 10.0


@contextlib.asynccontextmanager
async def api_client(kube: FakeKube) -> AsyncIterator[client.ApiClient]:
    api = await config.new_client_from_config(config_file=kube.kubeconfig)
    async with api:
        yield api


@pytest.fixture
async def api(fake_kube: FakeKube) -> AsyncIterator[client.ApiClient]:  # noqa: F811
    async with api_client(fake_kube) as api:
        yield api


async def eventually(check: Callable[[], Awaitable[Any]], what: str,
                     timeout: float = DEADLINE) -> Any:
    """Poll `check` until it returns something truthy, failing at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


def status_of(e: ApiException) -> dict[str, Any]:
    body = json.loads(e.body)
    assert body["kind"] == "Status" and body["apiVersion"] == "v1"
    assert body["status"] == "Failure" and body["code"] == e.status
    return body


async def new_namespace(api: client.ApiClient, name: str) -> None:
    await client.CoreV1Api(api).create_namespace({"metadata": {"name": name}})


def sleeper(name: str, replicas: int = 0, **labels: str) -> dict[str, Any]:
    """A Deployment whose pods are a quiet Python process (cheap to start and stop)."""
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": {"team": "a"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": {"containers": [{
                "name": "main", "image": "sleeper:1",
                "command": [sys.executable, "-c", "import time; time.sleep(120)"],
                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                "ports": [{"name": "http", "containerPort": 8080}],
            }]}},
        },
    }


def hello(name: str, version: str) -> dict[str, Any]:
    """A Deployment of examples/hello/app.py, ready when /healthz answers."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{
                "name": "hello", "image": f"hello:{version}",
                "command": [sys.executable, "examples/hello/app.py"],
                "env": [{"name": "WAKEGATE_VERSION", "value": version}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            }]}},
        },
    }


# --- connection, authentication, paths ---

async def test_kubeconfig_loads_and_system_namespaces_exist(fake_kube: FakeKube,  # noqa: F811
                                                            api: client.ApiClient) -> None:
    assert fake_kube.url.startswith("https://127.0.0.1:")
    version = await client.VersionApi(api).get_code()
    assert version.major == "1"
    names = [n.metadata.name for n in (await client.CoreV1Api(api).list_namespace()).items]
    assert {"default", "kube-system"} <= set(names)
    groups = await client.ApisApi(api).get_api_versions()
    assert {"apps", "discovery.k8s.io", "coordination.k8s.io"} <= {g.name for g in groups.groups}
    resources = await client.AppsV1Api(api).get_api_resources()
    assert {"deployments", "deployments/scale"} <= {r.name for r in resources.resources}


@pytest.mark.parametrize("token", ["wrong-token", None])
async def test_bad_or_missing_token_is_401(fake_kube: FakeKube, token: str | None) -> None:  # noqa: F811
    cfg = client.Configuration()
    await config.load_kube_config(config_file=fake_kube.kubeconfig, client_configuration=cfg)
    cfg.api_key = {"BearerToken": f"Bearer {token}"} if token else {}
    async with client.ApiClient(cfg) as api:
        with pytest.raises(ApiException) as e:
            await client.CoreV1Api(api).list_namespace()
    assert e.value.status == 401
    assert status_of(e.value)["reason"] == "Unauthorized"
    assert fake_kube.requests_seen == set()


async def test_tls_is_trusted_only_through_the_kubeconfig_ca(fake_kube: FakeKube) -> None:  # noqa: F811
    async with aiohttp.ClientSession() as http:
        # The system's CAs do not know the fake's throwaway CA.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await http.get(f"{fake_kube.url}/version")
        async with http.get(f"{fake_kube.url}/version", ssl=fake_kube.ssl_context()) as r:
            assert r.status == 401  # trusted, then refused: no token


async def test_unknown_path_is_404_and_wrong_method_405(api: client.ApiClient) -> None:
    for path in ("/apis/nope.example.com/v1/things", "/api/v1/nothings", "/healthz/nope"):
        with pytest.raises(ApiException) as e:
            await api.call_api(path, "GET", auth_settings=["BearerToken"],
                               response_types_map={200: "object"})
        assert e.value.status == 404
        assert status_of(e.value)["reason"] == "NotFound"
    with pytest.raises(ApiException) as e:
        await api.call_api("/api/v1/namespaces/default/services/x", "POST",
                           auth_settings=["BearerToken"], body={},
                           response_types_map={200: "object"})
    assert e.value.status == 405
    assert status_of(e.value)["reason"] == "MethodNotAllowed"


# --- CRUD ---

async def test_namespace_lifecycle(fake_kube: FakeKube, api: client.ApiClient) -> None:  # noqa: F811
    core = client.CoreV1Api(api)
    created = await core.create_namespace({"metadata": {"name": "team-a"}})
    assert created.status.phase == "Active"
    assert created.metadata.labels == {"kubernetes.io/metadata.name": "team-a"}
    assert created.metadata.uid and created.metadata.creation_timestamp
    found = await core.list_namespace(label_selector="kubernetes.io/metadata.name=team-a")
    assert [n.metadata.name for n in found.items] == ["team-a"]
    await core.create_namespaced_secret("team-a", {"metadata": {"name": "s"}})
    # The answer is the Namespace, now Terminating (the generated client would read it as
    # a V1Status, as it does against a real cluster, so read it raw).
    resp = await core.delete_namespace("team-a", _preload_content=False)
    gone = json.loads(await resp.read())
    assert gone["kind"] == "Namespace" and gone["status"]["phase"] == "Terminating"

    async def deleted() -> bool:
        try:
            await core.read_namespace("team-a")
        except ApiException as e:
            return e.status == 404
        return False

    await eventually(deleted, "the namespace to be emptied and removed")
    assert fake_kube.get("Secret", "team-a", "s") is None


async def test_create_get_list_delete_each_kind(api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    leases = client.CoordinationV1Api(api)
    await new_namespace(api, "crud")
    dep = await apps.create_namespaced_deployment("crud", sleeper("web"))
    assert dep.metadata.generation == 1 and dep.spec.replicas == 0
    assert dep.spec.strategy.type == "RollingUpdate"  # defaulted
    svc = await core.create_namespaced_service("crud", {
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}})
    assert svc.spec.cluster_ip and svc.spec.ports[0].protocol == "TCP"
    secret = await core.create_namespaced_secret("crud", {
        "metadata": {"generateName": "key-"}, "stringData": {"hash": "abc"}})
    assert secret.metadata.name.startswith("key-") and len(secret.metadata.name) == 9
    assert secret.data == {"hash": "YWJj"} and secret.type == "Opaque"
    lease = await leases.create_namespaced_lease("crud", {
        "metadata": {"name": "leader"},
        "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15,
                 "renewTime": "2024-01-01T00:00:00.5+00:00"}})
    assert lease.spec.holder_identity == "me"

    assert (await apps.read_namespaced_deployment("web", "crud")).metadata.uid == \
        dep.metadata.uid
    listed = await apps.list_deployment_for_all_namespaces()
    assert [d.metadata.name for d in listed.items] == ["web"]
    assert int(listed.metadata.resource_version) >= int(lease.metadata.resource_version)
    assert [s.metadata.name for s in (await core.list_service_for_all_namespaces()).items] == \
        ["web"]

    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment("crud", sleeper("web"))
    assert e.value.status == 409
    body = status_of(e.value)
    assert body["reason"] == "AlreadyExists"
    assert body["message"] == 'deployments.apps "web" already exists'
    assert body["details"] == {"name": "web", "group": "apps", "kind": "deployments"}

    status = await apps.delete_namespaced_deployment("web", "crud")
    assert status.status == "Success" and status.details.kind == "deployments"
    deleted_svc = await core.delete_namespaced_service("web", "crud")
    assert deleted_svc.metadata.name == "web"  # services answer with the deleted object
    await core.delete_namespaced_secret(secret.metadata.name, "crud")
    await leases.delete_namespaced_lease("leader", "crud")
    for read in (apps.read_namespaced_deployment("web", "crud"),
                 leases.read_namespaced_lease("leader", "crud")):
        with pytest.raises(ApiException) as e:
            await read
        assert e.value.status == 404
    assert status_of(e.value)["message"] == 'leases.coordination.k8s.io "leader" not found'


async def test_validation_like_the_real_server(api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment("nowhere", sleeper("web"))
    assert (e.value.status, status_of(e.value)["message"]) == (
        404, 'namespaces "nowhere" not found')
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment("default", {**sleeper("x"),
                                                            "metadata": {"name": "Bad_Name"}})
    body = status_of(e.value)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(ApiException) as e:
        await core.create_namespaced_service("default", {
            "metadata": {"name": "1starts-with-digit"}, "spec": {"ports": [{"port": 80}]}})
    assert e.value.status == 422  # services are DNS-1035 labels
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment("default", {
            **sleeper("web"), "metadata": {"name": "web", "namespace": "other"}})
    assert e.value.status == 400 and "does not match the namespace" in status_of(e.value)[
        "message"]
    with pytest.raises(ApiException) as e:
        await apps.create_namespaced_deployment("default", {
            "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"}})
    assert e.value.status == 400


async def test_update_with_stale_resource_version_is_409(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    secret = await core.create_namespaced_secret("default", {
        "metadata": {"name": "s"}, "stringData": {"k": "1"}})
    secret.string_data = {"k": "2"}
    updated = await core.replace_namespaced_secret("s", "default", secret)
    assert updated.data == {"k": "Mg=="}
    assert int(updated.metadata.resource_version) > int(secret.metadata.resource_version)
    # The same (now stale) resourceVersion again:
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_secret("s", "default", secret)
    body = status_of(e.value)
    assert e.value.status == 409 and body["reason"] == "Conflict"
    assert "the object has been modified" in body["message"]
    # An update that changes nothing does not write: same resourceVersion.
    again = await core.replace_namespaced_secret("s", "default", updated)
    assert again.metadata.resource_version == updated.metadata.resource_version
    with pytest.raises(ApiException) as e:
        await core.replace_namespaced_secret("missing", "default", {
            "metadata": {"name": "missing"}})
    assert e.value.status == 404


async def test_three_patch_types(api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment("default", sleeper("web"))
    merged = await apps.patch_namespaced_deployment(
        "web", "default", {"metadata": {"labels": {"team": None, "tier": "x"}}},
        _content_type="application/merge-patch+json")
    assert merged.metadata.labels == {"tier": "x"}
    assert merged.metadata.generation == 1  # metadata only: the spec did not change
    # Strategic merge: containers merge by name, env by name; the other entries stay.
    strategic = await apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {
        "spec": {"containers": [{"name": "main", "env": [{"name": "B", "value": "3"}]}]}}}})
    env = strategic.spec.template.spec.containers[0].env
    assert [(v.name, v.value) for v in env] == [("A", "1"), ("B", "3")]
    assert strategic.metadata.generation == 2
    # A merge patch replaces lists whole.
    replaced = await apps.patch_namespaced_deployment("web", "default", {"spec": {"template": {
        "spec": {"containers": [{"name": "main", "image": "x:2",
                                 "env": [{"name": "C", "value": "4"}]}]}}}},
        _content_type="application/merge-patch+json")
    assert [v.name for v in replaced.spec.template.spec.containers[0].env] == ["C"]
    assert replaced.spec.template.spec.containers[0].command is None
    json_patched = await apps.patch_namespaced_deployment("web", "default", [
        {"op": "test", "path": "/metadata/labels/tier", "value": "x"},
        {"op": "replace", "path": "/spec/replicas", "value": 0},
        {"op": "add", "path": "/metadata/annotations", "value": {"example.com/a": "1"}},
        {"op": "add", "path": "/metadata/annotations/example.com~1b", "value": "2"}])
    assert json_patched.metadata.annotations == {"example.com/a": "1", "example.com/b": "2"}
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment(
            "web", "default", [{"op": "test", "path": "/metadata/labels/tier", "value": "y"}])
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment("web", "default", {"spec": {}},
                                               _content_type="application/apply-patch+yaml")
    assert e.value.status == 415


async def test_scale_subresource(fake_kube: FakeKube, api: client.ApiClient) -> None:  # noqa: F811
    apps = client.AppsV1Api(api)
    await apps.create_namespaced_deployment("default", sleeper("web"))
    scale = await apps.read_namespaced_deployment_scale("web", "default")
    assert scale.kind == "Scale" and scale.api_version == "autoscaling/v1"
    assert not scale.spec.replicas and scale.status.selector == "app=web"
    scale.spec.replicas = 2
    scaled = await apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert scaled.spec.replicas == 2
    with pytest.raises(ApiException) as e:  # the same resourceVersion again: stale
        await apps.replace_namespaced_deployment_scale("web", "default", scale)
    assert e.value.status == 409
    patched = await apps.patch_namespaced_deployment_scale("web", "default",
                                                           {"spec": {"replicas": 1}})
    assert patched.spec.replicas == 1
    dep = await apps.read_namespaced_deployment("web", "default")
    assert dep.spec.replicas == 1 and dep.metadata.generation == 3
    with pytest.raises(ApiException) as e:
        await apps.patch_namespaced_deployment_scale("web", "default", {"spec": {"replicas": -1}})
    assert e.value.status == 422
    with pytest.raises(ApiException) as e:
        await apps.read_namespaced_deployment_scale("nope", "default")
    assert e.value.status == 404
    assert ("apps", "deployments", "scale", "patch") in fake_kube.requests_seen
    assert ("apps", "deployments", "scale", "update") in fake_kube.requests_seen


async def test_label_and_field_selectors(api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    for name, labels in (("a", {"app": "a", "tier": "web"}), ("b", {"app": "b"}), ("c", {})):
        await core.create_namespaced_secret("default", {"metadata": {"name": name,
                                                                     "labels": labels}})

    async def names(**selectors: str) -> list[str]:
        found = await core.list_namespaced_secret("default", **selectors)
        return [s.metadata.name for s in found.items]

    assert await names(label_selector="app=a") == ["a"]
    assert await names(label_selector="app==a") == ["a"]
    assert await names(label_selector="app!=a") == ["b", "c"]
    assert await names(label_selector="app in (a, b)") == ["a", "b"]
    assert await names(label_selector="app notin (a)") == ["b", "c"]
    assert await names(label_selector="tier") == ["a"]
    assert await names(label_selector="!tier") == ["b", "c"]
    assert await names(label_selector="app,!tier") == ["b"]
    assert await names(field_selector="metadata.name=b") == ["b"]
    assert await names(field_selector="metadata.name!=b,metadata.namespace=default") == ["a", "c"]
    with pytest.raises(ApiException) as e:
        await names(label_selector="app in (a")
    assert e.value.status == 400
    with pytest.raises(ApiException) as e:
        await names(field_selector="spec.nope=1")
    assert e.value.status == 400


# --- watches ---

async def test_watch_from_resource_version_sees_exactly_the_later_events(
        api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_secret("default", {"metadata": {"name": "before"}})
    start = (await core.list_namespaced_secret("default")).metadata.resource_version
    await core.create_namespaced_secret("default", {"metadata": {"name": "one"}})
    await core.create_namespaced_secret("default", {"metadata": {"name": "two"}})
    await core.patch_namespaced_secret("one", "default", {"metadata": {"labels": {"x": "y"}}})
    await core.delete_namespaced_secret("two", "default")
    await core.create_namespaced_secret("kube-system", {"metadata": {"name": "elsewhere"}})
    seen = []
    async with watch.Watch() as w:
        async for event in w.stream(core.list_namespaced_secret, "default",
                                    resource_version=start, timeout_seconds=5):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 4:
                # The replay is done; what is written now arrives live on the same stream.
                await core.create_namespaced_secret("default", {"metadata": {"name": "live"}})
            if len(seen) == 5:
                w.stop()
    assert seen == [("ADDED", "one"), ("ADDED", "two"), ("MODIFIED", "one"),
                    ("DELETED", "two"), ("ADDED", "live")]


async def test_watch_without_resource_version_starts_with_the_current_state(
        api: client.ApiClient) -> None:
    core = client.CoreV1Api(api)
    await core.create_namespaced_secret("default", {"metadata": {"name": "a",
                                                                 "labels": {"app": "x"}}})
    await core.create_namespaced_secret("default", {"metadata": {"name": "b"}})
    seen = []
    async with watch.Watch() as w:
        # The stream ends by itself at timeoutSeconds.
        async for event in w.stream(core.list_namespaced_secret, "default",
                                    label_selector="app=x", timeout_seconds=1):
            seen.append((event["type"], event["object"].metadata.name))
            if len(seen) == 1:
                # Leaving the selection is a DELETED event for this watch.
                await core.patch_namespaced_secret("a", "default",
                                                   {"metadata": {"labels": {"app": "z"}}})
    assert seen == [("ADDED", "a"), ("DELETED", "a")]


async def test_watch_from_a_compacted_resource_version_gets_410(
        fake_kube: FakeKube, api: client.ApiClient) -> None:  # noqa: F811
    core = client.CoreV1Api(api)
    old = (await core.list_namespaced_secret("default")).metadata.resource_version
    await core.create_namespaced_secret("default", {"metadata": {"name": "a"}})
    fake_kube.compact()
    # With timeoutSeconds the client raises at once; without, it retries once, then raises.
    for extra in ({"timeout_seconds": 5}, {}):
        with pytest.raises(ApiException) as e:
            async with watch.Watch() as w:
                async for _ in w.stream(core.list_namespaced_secret, "default",
                                        resource_version=old, **extra):
                    pytest.fail("a watch from a compacted resourceVersion sent an event")
        assert e.value.status == 410
        assert e.value.reason.startswith("Expired: too old resource version")
    # The current resourceVersion still works after the compaction.
    current = (await core.list_namespaced_secret("default")).metadata.resource_version
    async with watch.Watch() as w:
        async for event in w.stream(core.list_namespaced_secret, "default",
                                    resource_version=current, timeout_seconds=1):
            pytest.fail(f"unexpected event {event['type']}")


async def test_bounded_history_expires_old_versions(tmp_path: Path) -> None:
    async with FakeKube(tmp_path, history=3) as kube, api_client(kube) as api:
        core = client.CoreV1Api(api)
        start = (await core.list_namespaced_secret("default")).metadata.resource_version
        for i in range(5):
            await core.create_namespaced_secret("default", {"metadata": {"name": f"s{i}"}})
        with pytest.raises(ApiException) as e:
            async with watch.Watch() as w:
                async for _ in w.stream(core.list_namespaced_secret, "default",
                                        resource_version=start, timeout_seconds=1):
                    pass
        assert e.value.status == 410


async def test_bookmarks_carry_the_current_resource_version(tmp_path: Path) -> None:
    async with FakeKube(tmp_path, bookmark_interval=0.05) as kube, api_client(kube) as api:
        core = client.CoreV1Api(api)
        async with watch.Watch() as w:
            async for event in w.stream(core.list_namespaced_secret, "default",
                                        allow_watch_bookmarks=True, timeout_seconds=5):
                assert event["type"] == "BOOKMARK"
                assert event["raw_object"]["kind"] == "Secret"
                assert event["raw_object"]["metadata"]["resourceVersion"] == \
                    kube.resource_version
                w.stop()

        async def closed() -> bool:
            return kube.open_watches == 0

        await eventually(closed, "the server to notice the watch is gone")


async def test_drop_watches_cuts_the_stream(fake_kube: FakeKube, api: client.ApiClient) -> None:  # noqa: F811
    core = client.CoreV1Api(api)

    async def consume() -> None:
        async with watch.Watch() as w:
            async for _ in w.stream(core.list_namespaced_secret, "default", timeout_seconds=30):
                pass

    task = asyncio.create_task(consume())

    async def watching() -> bool:
        return fake_kube.open_watches == 1

    await eventually(watching, "the watch to be open")
    fake_kube.drop_watches()
    with pytest.raises(aiohttp.ClientError):
        await asyncio.wait_for(task, DEADLINE)


async def test_fail_next_and_requests_seen(fake_kube: FakeKube, api: client.ApiClient) -> None:  # noqa: F811
    core = client.CoreV1Api(api)
    fake_kube.fail_next(2, status=503)
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            await core.list_namespaced_secret("default")
        assert e.value.status == 503 and status_of(e.value)["reason"] == "ServiceUnavailable"
    await core.list_namespaced_secret("default")
    fake_kube.fail_next(1)
    with pytest.raises(ApiException) as e:
        await core.read_namespace("default")
    assert e.value.status == 500 and status_of(e.value)["reason"] == "InternalError"
    async with watch.Watch() as w:
        async for _ in w.stream(client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces,
                                timeout_seconds=1):
            pass
    assert fake_kube.requests_seen == {
        ("", "secrets", "", "list"), ("", "namespaces", "", "get"),
        ("discovery.k8s.io", "endpointslices", "", "watch")}


# --- the kubelet ---

async def test_deployment_pods_are_real_processes_behind_endpoint_slices(
        fake_kube: FakeKube, api: client.ApiClient) -> None:  # noqa: F811
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    slices = client.DiscoveryV1Api(api)
    await new_namespace(api, "demo")
    await core.create_namespaced_service("demo", {
        "metadata": {"name": "hello"},
        "spec": {"selector": {"app": "hello"},
                 "ports": [{"name": "web", "port": 80, "targetPort": "http"}]}})
    await apps.create_namespaced_deployment("demo", hello("hello", "1.2.3"))

    async def ready_endpoints() -> list[tuple[str, int]]:
        found = await slices.list_namespaced_endpoint_slice(
            "demo", label_selector="kubernetes.io/service-name=hello")
        assert len(found.items) == 1
        s = found.items[0]
        assert s.metadata.name.startswith("hello-") and len(s.metadata.name) == 11
        assert s.metadata.labels["endpointslice.kubernetes.io/managed-by"] == \
            "endpointslice-controller.k8s.io"
        assert s.address_type == "IPv4"
        return [(e.addresses[0], s.ports[0].port) for e in s.endpoints or []
                if e.conditions.ready]

    assert await ready_endpoints() == []
    await apps.patch_namespaced_deployment_scale("hello", "demo", {"spec": {"replicas": 2}})
    endpoints = await eventually(
        lambda: _when(ready_endpoints(), lambda eps: len(eps) == 2), "two ready endpoints")
    assert len({ip for ip, _ in endpoints}) == 2
    async with aiohttp.ClientSession() as http:
        for ip, port in endpoints:
            assert ip.startswith("127.") and ip != "127.0.0.1" and port == 8080
            async with http.get(f"http://{ip}:{port}/") as r:
                assert r.status == 200
                assert (await r.json())["version"] == "1.2.3"
    pids = fake_kube.pod_pids("demo", "hello")
    assert len(pids) == 2 and all(_alive(p) for p in pids)

    async def status_ready() -> bool:
        dep = await apps.read_namespaced_deployment_status("hello", "demo")
        return dep.status.ready_replicas == 2 and dep.status.observed_generation == 2

    await eventually(status_ready, "the Deployment status to report 2 ready replicas")

    await apps.patch_namespaced_deployment_scale("hello", "demo", {"spec": {"replicas": 0}})

    async def slice_empty() -> bool:
        found = await slices.list_namespaced_endpoint_slice("demo")
        return not found.items[0].endpoints

    await eventually(slice_empty, "the endpoints to go away")
    await eventually(_async(lambda: not any(_alive(p) for p in pids)), "the processes to exit")
    assert fake_kube.pod_pids("demo", "hello") == []
    dep = await apps.read_namespaced_deployment("hello", "demo")
    assert dep.status.replicas is None and dep.status.ready_replicas is None  # omitempty


async def test_template_change_rolls_the_pods(fake_kube: FakeKube,  # noqa: F811
                                              api: client.ApiClient) -> None:
    apps = client.AppsV1Api(api)
    dep = hello("roll", "1")
    dep["spec"]["replicas"] = 1
    await apps.create_namespaced_deployment("default", dep)
    first = await eventually(_async(lambda: fake_kube.pod_pids("default", "roll")),
                             "the first pod")
    await apps.patch_namespaced_deployment("roll", "default", {"spec": {"template": {"spec": {
        "containers": [{"name": "hello", "env": [{"name": "WAKEGATE_VERSION", "value": "2"}]}]}}}})

    async def rolled() -> bool:
        d = await apps.read_namespaced_deployment("roll", "default")
        pids = fake_kube.pod_pids("default", "roll")
        return (d.status.updated_replicas == 1 and d.status.ready_replicas == 1
                and d.status.replicas == 1 and pids and first[0] not in pids)

    await eventually(rolled, "the new pod to replace the old one")
    assert not _alive(first[0])
    d = await apps.read_namespaced_deployment("roll", "default")
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2"


async def test_a_crashed_process_is_restarted(fake_kube: FakeKube,  # noqa: F811
                                              api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    dep = hello("crashy", "1")
    dep["spec"]["replicas"] = 1
    await apps.create_namespaced_deployment("default", dep)

    async def ready_pod() -> Any:
        pods = await core.list_namespaced_pod("default", label_selector="app=crashy")
        return next((p for p in pods.items if p.status.container_statuses
                     and p.status.container_statuses[0].ready), None)

    pod = await eventually(ready_pod, "the pod to be ready")
    async with aiohttp.ClientSession() as http:
        with contextlib.suppress(aiohttp.ClientError):
            await http.get(f"http://{pod.status.pod_ip}:8080/crash")

    async def restarted() -> bool:
        p = await core.read_namespaced_pod(pod.metadata.name, "default")
        s = p.status.container_statuses[0]
        return s.restart_count == 1 and s.ready

    await eventually(restarted, "the pod to be restarted and ready again")


async def test_deleting_a_deployment_stops_its_pods(fake_kube: FakeKube,  # noqa: F811
                                                    api: client.ApiClient) -> None:
    core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
    await apps.create_namespaced_deployment("default", sleeper("gone", replicas=1))
    pids = await eventually(_async(lambda: fake_kube.pod_pids("default", "gone")), "a pod")
    await apps.delete_namespaced_deployment("gone", "default")

    async def no_pods() -> bool:
        return not (await core.list_namespaced_pod("default", label_selector="app=gone")).items

    await eventually(no_pods, "the pods to be garbage-collected")
    assert not _alive(pids[0])


async def test_stopping_the_server_leaves_no_process(tmp_path: Path) -> None:
    async with FakeKube(tmp_path) as kube:
        await kube.create({"apiVersion": "v1", "kind": "Namespace",
                           "metadata": {"name": "stop"}})
        dep = sleeper("sleepy", replicas=2)
        dep["metadata"]["namespace"] = "stop"
        await kube.create(dep)
        pids = await eventually(_async(lambda: len(kube.pod_pids("stop", "sleepy")) == 2
                                       and kube.pod_pids("stop", "sleepy")), "two pods")
        for pid in pids:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            # The markers the suite's leftover checks look for (tests/conftest.py).
            assert f"WAKEGATE_TEST_INSTANCE={kube.marker}".encode() in environ
            assert f"WAKEGATE_TEST_RUN={RUN_MARKER}".encode() in environ
    assert not any(_alive(p) for p in pids)
    assert processes_with("WAKEGATE_TEST_INSTANCE", kube.marker) == []


def test_sync_use_with_blocking_test_code(tmp_path: Path) -> None:
    # The fake runs on its own thread: a test that blocks does not stop it answering.
    with FakeKube(tmp_path) as kube:
        kube.create_sync(sleeper("sync", replicas=1))
        deadline = time.monotonic() + DEADLINE
        while not kube.pod_pids("default", "sync"):
            assert time.monotonic() < deadline, "the pod did not start"
            time.sleep(0.01)
        pid = kube.pod_pids("default", "sync")[0]

        async def ready_replicas() -> int | None:
            async with api_client(kube) as api:
                dep = await client.AppsV1Api(api).read_namespaced_deployment("sync", "default")
                return dep.status.ready_replicas

        while asyncio.run(ready_replicas()) != 1:
            assert time.monotonic() < deadline, "the Deployment did not become ready"
            time.sleep(0.01)
    assert not _alive(pid)


async def test_direct_create_validates_like_a_post(fake_kube: FakeKube) -> None:  # noqa: F811
    created = await fake_kube.create({"apiVersion": "v1", "kind": "Secret",
                                      "metadata": {"name": "direct"}})
    assert created["metadata"]["namespace"] == "default"
    assert fake_kube.get("Secret", "default", "direct") == created
    assert fake_kube.get("secrets", "default", "other") is None
    with pytest.raises(ApiError) as e:
        await fake_kube.create({"apiVersion": "v1", "kind": "Secret",
                                "metadata": {"name": "direct"}})
    assert e.value.code == 409 and e.value.status()["reason"] == "AlreadyExists"
    assert fake_kube.requests_seen == set()  # only HTTP requests are recorded


# --- helpers ---

async def _when(value: Awaitable[Any], test: Callable[[Any], bool]) -> Any:
    result = await value
    return result if test(result) else None


def _async(check: Callable[[], Any]) -> Callable[[], Awaitable[Any]]:
    async def run() -> Any:
        return check()
    return run


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False
