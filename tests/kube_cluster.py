"""A fake Kubernetes cluster for wakegate's tests, with the objects and moves tests make.

The fake API server (tests/kube) runs on a thread and event loop of its own, so
a test may block (waiting on a wakegate process, calling the CLI) without
stalling the API server that wakegate talks to. Objects are made through the
server's own create path; a Deployment is scaled by hand with the real kubectl.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from tests import kubectl
from tests.kube import FakeKube

T = TypeVar("T")

HELLO_PORT = 8080


class Cluster:
    def __init__(self, tmp: Path, start_delay: float = 0.05) -> None:
        self.kube = FakeKube(tmp, start_delay=start_delay)
        self.kube.__enter__()
        # Where the manifests put the controller, and so its Lease.
        self.create({"apiVersion": "v1", "kind": "Namespace",
                     "metadata": {"name": "wakegate-system"}})

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """A hook of the fake (kube.compact, ...): each runs on the fake's loop and waits."""
        return fn(*args)

    def close(self) -> None:
        self.kube.__exit__(None, None, None)

    @property
    def kubeconfig(self) -> str:
        return str(self.kube.kubeconfig)

    def settings(self) -> dict[str, Any]:
        """The `kubernetes:` config section for this cluster, with failover in about 1 s."""
        return {
            "kubeconfig": self.kubeconfig,
            "lease_duration": "1s", "renew_deadline": "600ms", "retry_period": "100ms",
            "activity_persist_interval": "200ms",
        }

    def create(self, obj: dict[str, Any]) -> Any:
        return self.kube.create_sync(obj)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.kube.get(kind, namespace, name)

    def replicas(self, namespace: str, name: str) -> int:
        obj = self.get("Deployment", namespace, name)
        assert obj is not None
        return int(obj["spec"].get("replicas") or 0)

    def pod_pids(self, namespace: str, deployment: str) -> list[int]:
        return self.kube.pod_pids(namespace, deployment)

    # --- objects ---

    def environment(self, namespace: str, environment: str, kind: str,
                    prefix: str | None = None) -> None:
        """A namespace labelled as an environment (with `wakegate.dev/prefix` when given:
        "" for none)."""
        labels = {"wakegate.dev/environment": environment, "wakegate.dev/kind": kind}
        if prefix is not None:
            labels["wakegate.dev/prefix"] = prefix
        self.create({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": namespace, "labels": labels},
        })

    def service(self, namespace: str, name: str, replicas: int = 0, version: str = "1.0.0",
                annotations: dict[str, str] | None = None,
                env: dict[str, str] | None = None, command: list[str] | None = None,
                readiness_path: str = "/healthz", grace_seconds: int = 2,
                instance: str | None = None) -> None:
        """A Deployment + Service of the hello example, annotated as a wakegate instance
        (of the service `instance`, by default the Deployment's own name)."""
        labels = {"app": name}
        container_env = [{"name": "WAKEGATE_VERSION", "value": version},
                         {"name": "SERVICE_NAME", "value": instance or name}]
        container_env += [{"name": k, "value": v} for k, v in (env or {}).items()]
        self.create({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "annotations": {
                "wakegate.dev/service": instance or name, **(annotations or {})}},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{
                        "name": "app", "image": f"example/hello:{version}",
                        "command": command or [sys.executable, "examples/hello/app.py"],
                        "env": container_env,
                        "ports": [{"name": "http", "containerPort": HELLO_PORT}],
                        "readinessProbe": {"httpGet": {"path": readiness_path,
                                                       "port": HELLO_PORT}},
                    }], "terminationGracePeriodSeconds": grace_seconds},
                },
            },
        })
        self.create({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": labels,
                     "ports": [{"name": "http", "port": 80, "targetPort": HELLO_PORT}]},
        })

    def scale(self, namespace: str, name: str, replicas: int) -> None:
        """Scale a Deployment by hand, as its owner would: with `kubectl scale`."""
        done = kubectl.run("scale", f"deployment/{name}", "-n", namespace,
                           f"--replicas={replicas}", kubeconfig=self.kubeconfig,
                           cache_dir=self.kube.directory / "kubectl-cache")
        assert done.returncode == 0, done.stderr

    def put(self, path: str, obj: dict[str, Any]) -> int:
        """A PUT as any client makes it; the HTTP status (409 on a stale resourceVersion)."""
        request = urllib.request.Request(
            f"{self.kube.url}{path}", data=json.dumps(obj).encode(), method="PUT",
            headers={"Authorization": f"Bearer {self.kube.token}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10,
                                        context=self.kube.ssl_context()) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
