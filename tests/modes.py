"""One test, three deployments: `wakegate up`, split mode, and the Kubernetes runtime.

A test module opts in with `from .modes import wakegate_in_every_mode  # noqa: F401`:
its `wakegate` fixture then starts the config in every mode (conftest's
`pytest_generate_tests` parametrizes the test by `wakegate_mode`).
`@pytest.mark.modes("up", "split")` limits a test to some modes, for what only
exists there (a process's log file, for one).

- up: one `wakegate up` process, local runtime.
- split: one `wakegate controller` and two `wakegate proxy` processes; requests
  go to the first proxy while the second reports too.
- kubernetes: `wakegate up` with `runtime: kubernetes` against the fake API
  server; each service of the config becomes an annotated Deployment + Service
  in a namespace labelled as its environment, whose pods the fake kubelet runs.
"""

from __future__ import annotations

import math
import shlex
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import parse_duration

from .conftest import Split, Wakegate
from .kube_cluster import HELLO_PORT, Cluster

# Served by the controller; every other wakegate_* metric by the proxies.
_CONTROLLER_METRICS = (
    "wakegate_instance_", "wakegate_scale_events_total", "wakegate_release_active",
    "wakegate_ephemeral_",
)


class SplitView:
    """A Split deployment seen through the interface of a `wakegate up` process."""

    def __init__(self, split: Split) -> None:
        self.split = split
        self.controller_process = split.controller
        self.host = Wakegate.host

    @property
    def base(self) -> str:
        return self.split.proxies[0].base

    @property
    def proxy_port(self) -> int:
        return self.split.proxies[0].port

    @property
    def controller(self) -> str:
        return self.controller_process.controller

    @property
    def controller_port(self) -> int:
        return self.controller_process.controller_port

    def metric(self, name: str, **labels: str) -> float | None:
        if name.startswith(_CONTROLLER_METRICS):
            return self.split.controller_metric(name, **labels)
        values = [p.metric(name, **labels) for p in self.split.proxies if p.proc]
        present = [v for v in values if v is not None]
        return sum(present) if present else None

    def __getattr__(self, name: str) -> Any:
        # status, state, wait_state, service_pids, log_of: the split harness's own.
        if hasattr(self.split, name):
            return getattr(self.split, name)
        return getattr(self.controller_process, name)  # cli, api, new_keys, ...


class KubeView:
    """`wakegate up` on the Kubernetes runtime, and the fake cluster it drives."""

    def __init__(self, wg: Wakegate, cluster: Cluster,
                 deployments: list[tuple[str, str]]) -> None:
        self.wg = wg
        self.cluster = cluster
        self.deployments = deployments

    def service_pids(self) -> list[int]:
        return sorted(pid for namespace, name in self.deployments
                      for pid in self.cluster.pod_pids(namespace, name))

    def _pod_logs(self, environment: str, service: str) -> list[Path]:
        # The fake kubelet keeps one log per pod, as a kubelet does.
        pods = self.cluster.kube.directory / "pods"
        return sorted(pods.glob(f"{_namespace(environment)}_{service}-*.log"))

    def log_of(self, environment: str, service: str) -> str:
        return "".join(path.read_text() for path in self._pod_logs(environment, service))

    def starts(self, environment: str, service: str) -> int:
        """A start is a pod."""
        return len(self._pod_logs(environment, service))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wg, name)


def _namespace(environment: str) -> str:
    return f"{environment.lower()}-ns"


def to_cluster(config: dict[str, Any], cluster: Cluster) -> tuple[dict[str, Any],
                                                                  list[tuple[str, str]]]:
    """Create the config's environments and services in the cluster; the config left to load."""
    environments: dict[str, Any] = config.get("environments") or {"private": {}, "demo": {}}
    for name, settings in environments.items():
        kind = (settings or {}).get("kind", name)
        cluster.environment(_namespace(name), name, kind)
    deployments = []
    for service, svc in (config.get("services") or {}).items():
        version = str(svc.get("version", "0.0.0"))
        values = {"python": sys.executable, "version": version, "port": str(HELLO_PORT)}
        command = [part.format_map(values) for part in shlex.split(svc["command"])]
        annotations = {"wakegate.dev/version": version}
        activity = svc.get("activity") or {}
        if activity.get("ignore_paths"):
            annotations["wakegate.dev/ignore-paths"] = ",".join(activity["ignore_paths"])
        if svc.get("depends_on"):
            annotations["wakegate.dev/depends-on"] = ",".join(svc["depends_on"])
        if activity.get("ignore_user_agents"):
            annotations["wakegate.dev/ignore-user-agents"] = ",".join(
                activity["ignore_user_agents"])
        readiness = (svc.get("readiness") or {}).get("http", "/")
        grace = svc.get("stop_grace", "2s")
        for environment in svc.get("environments") or ["private", "demo"]:
            namespace = _namespace(environment)
            cluster.service(namespace, service, version=version, annotations=annotations,
                            env={str(k): str(v) for k, v in (svc.get("env") or {}).items()},
                            command=command, readiness_path=readiness,
                            grace_seconds=math.ceil(parse_duration(grace)))
            deployments.append((namespace, service))
    loaded = {k: v for k, v in config.items() if k != "services"}
    loaded["services"] = {}
    loaded["environments"] = environments
    loaded["runtime"] = "kubernetes"
    loaded["kubernetes"] = cluster.settings()
    return loaded, deployments


@pytest.fixture(name="wakegate")
def wakegate_in_every_mode(
    wakegate_mode: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[..., Any]]:
    if wakegate_mode == "up":
        yield request.getfixturevalue("_wakegate_up")
        return
    if wakegate_mode == "split":
        start_split = request.getfixturevalue("split")

        def start(config: dict[str, Any], name: str = "wakegate") -> SplitView:
            return SplitView(start_split(config, proxies=2))

        yield start
        return
    clusters: list[Cluster] = []
    start_up = request.getfixturevalue("_wakegate_up")
    stoppers: list[Wakegate] = []

    def start_kube(config: dict[str, Any], name: str = "wakegate") -> KubeView:
        cluster = Cluster(tmp_path / f"kube-{len(clusters)}")
        clusters.append(cluster)
        loaded, deployments = to_cluster(config, cluster)
        wg = start_up(loaded, name)
        stoppers.append(wg)
        return KubeView(wg, cluster, deployments)

    try:
        yield start_kube
    finally:
        # wakegate first (it must not see its cluster vanish), then the cluster.
        for wg in stoppers:
            wg.stop()
        for cluster in clusters:
            cluster.close()
