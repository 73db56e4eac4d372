"""A simulated kubelet: every Pod in the store runs as a real local process.

A pod gets its own loopback address (127.x.y.z, never 127.0.0.1), so all pods
can listen on the same container port. Its first container runs as
`command + args` with the repository root as working directory and the
environment of the test process plus the container's `env`, `PORT` (the first
containerPort), `HOST` and `POD_IP` (the pod's address). The readiness probe
(httpGet, tcpSocket or exec) is polled every 10 ms until it passes, then every
100 ms; the pod's Ready condition follows it. A process that exits is restarted
after a short back-off, as restartPolicy Always does. A pod marked for
deletion gets SIGTERM, then SIGKILL after its grace period (capped by
`kill_after`), and is then removed from the store.

Process hygiene: each process leads its own process group (start_new_session)
and dies with the test process (PR_SET_PDEATHSIG); it is stopped by its
process group id, never by name.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from .errors import ApiError
from .loop import ControlLoop
from .registry import Registry
from .resources import by_kind
from .store import Event, Store
from .strategies import now_time

log = logging.getLogger("tests.kube.kubelet")

Obj = dict[str, Any]

NODE_NAME = "fake-node"
NODE_IP = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

PROBE_INTERVAL_STARTING = 0.01
PROBE_INTERVAL_READY = 0.1
RESTART_BACKOFF_MAX = 2.0

# Addresses in use by any fake kubelet of this process, so two fake clusters in one test
# never hand out the same pod IP.
_IPS_IN_USE: set[str] = set()


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: SIGKILL it if the test process dies.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def allocate_ip() -> str:
    while True:
        ip = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        if ip not in _IPS_IN_USE:
            _IPS_IN_USE.add(ip)
            return ip


def release_ip(ip: str) -> None:
    _IPS_IN_USE.discard(ip)


_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z0-9]+)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in command, args and env values; $$ escapes a $."""
    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env.get(name, m.group(0))

    return _VAR_REF.sub(sub, text)


def _condition(kind: str, status: bool, old: list[Obj]) -> Obj:
    value = "True" if status else "False"
    for c in old:
        if c.get("type") == kind and c.get("status") == value:
            return c  # unchanged: keep its transition time
    return {"type": kind, "status": value, "lastProbeTime": None,
            "lastTransitionTime": now_time()}


class ContainerConfigError(Exception):
    pass


class PodRunner:
    """One pod: its process, its probe loop, its restarts and its termination."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        self.kubelet = kubelet
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.owner = _deployment_of(pod)
        self.spec: Obj = pod.get("spec") or {}
        self.container: Obj = (self.spec.get("containers") or [{}])[0]
        self.ip = allocate_ip()
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.started_at = ""
        self.grace = 0.0
        self.stopping = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        if self.proc is not None and self.proc.returncode is None:
            return self.proc.pid
        return None

    def start(self) -> None:
        self.task = asyncio.create_task(self._run(), name=f"pod {self.namespace}/{self.name}")

    def stop(self, grace: float) -> None:
        if not self.stopping.is_set():
            self.grace = min(max(grace, 0.0), self.kubelet.settings.kill_after)
            self.stopping.set()

    # --- the pod's life ---

    async def _run(self) -> None:
        try:
            if await self._sleep_or_stop(self.kubelet.settings.start_delay):
                return
            while not self.stopping.is_set():
                try:
                    await self._spawn()
                except (ContainerConfigError, OSError) as e:
                    self._write_status(self._waiting(
                        "CreateContainerConfigError" if isinstance(e, ContainerConfigError)
                        else "RunContainerError", str(e)))
                    if await self._sleep_or_stop(self._backoff()):
                        return
                    continue
                code = await self._supervise()
                if code is None:
                    return  # asked to stop
                self.restarts += 1
                policy = self.spec.get("restartPolicy", "Always")
                if policy == "Never" or (policy == "OnFailure" and code == 0):
                    self._write_status(self._terminated(code, final=True))
                    await self.stopping.wait()
                    return
                self._write_status(self._terminated(code, final=False))
                if await self._sleep_or_stop(self._backoff()):
                    return
        except Exception:
            log.exception("pod %s/%s: the fake kubelet failed", self.namespace, self.name)
            self._write_status(self._waiting("FakeKubeletError", "see the test log"))
            # Keep the pod (not running) until it is deleted, rather than respawn a failure.
            await self.stopping.wait()
        finally:
            await self._kill()
            release_ip(self.ip)
            self.kubelet.finished(self)

    def _backoff(self) -> float:
        base = self.kubelet.settings.restart_backoff
        return min(base * 2 ** max(self.restarts - 1, 0), RESTART_BACKOFF_MAX)

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True if the pod was asked to stop meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.kubelet.settings.markers)
        ports = self.container.get("ports") or []
        if ports:
            env["PORT"] = str(ports[0].get("containerPort"))
        env["HOST"] = self.ip
        env["POD_IP"] = self.ip
        own: dict[str, str] = {}
        for item in self.container.get("env") or []:
            name = item.get("name", "")
            if "value" in item:
                own[name] = expand(str(item.get("value") or ""), own)
            elif "valueFrom" in item:
                own[name] = self._value_from(name, item["valueFrom"])
            else:
                own[name] = ""
        env.update(own)
        return env

    def _value_from(self, name: str, source: Obj) -> str:
        ref = source.get("fieldRef")
        if ref:
            fields = {"metadata.name": self.name, "metadata.namespace": self.namespace,
                      "metadata.uid": self.uid, "status.podIP": self.ip,
                      "spec.nodeName": NODE_NAME, "status.hostIP": NODE_IP}
            path = ref.get("fieldPath", "")
            if path not in fields:
                raise ContainerConfigError(f"unsupported fieldPath {path!r} for env {name}")
            return fields[path]
        ref = source.get("secretKeyRef")
        if ref:
            secret = self.kubelet.store.get("/secrets", self.namespace, ref.get("name", ""))
            data = (secret or {}).get("data") or {}
            if ref.get("key") not in data:
                if ref.get("optional"):
                    return ""
                raise ContainerConfigError(
                    f'secret "{ref.get("name")}" not found or has no key {ref.get("key")!r}')
            return base64.b64decode(data[ref["key"]]).decode()
        raise ContainerConfigError(f"unsupported valueFrom for env {name}")

    async def _spawn(self) -> None:
        env = self.environment()
        argv = [expand(str(a), env) for a in
                (self.container.get("command") or []) + (self.container.get("args") or [])]
        if not argv:
            raise ContainerConfigError(
                "the fake kubelet has no image entrypoint: the container needs a command")
        settings = self.kubelet.settings
        workdir = self.container.get("workingDir")
        cwd = workdir if workdir and os.path.isabs(workdir) else str(settings.repo_root)
        log_path = settings.log_dir / f"{self.namespace}_{self.name}.log"
        with open(log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=_die_with_parent)
        self.started_at = now_time()
        self._write_status(self._running(ready=False))

    async def _supervise(self) -> int | None:
        """Probe until the process exits (its code) or the pod is told to stop (None)."""
        proc = self.proc
        assert proc is not None
        exited = asyncio.ensure_future(proc.wait())
        stop = asyncio.ensure_future(self.stopping.wait())
        probe = self.container.get("readinessProbe")
        ready = False
        failures = 0
        if not probe:
            ready = True
            self._write_status(self._running(ready=True))
        try:
            while True:
                interval = PROBE_INTERVAL_READY if ready else PROBE_INTERVAL_STARTING
                done, _ = await asyncio.wait({exited, stop}, timeout=interval,
                                             return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    return None
                if exited in done:
                    return proc.returncode
                if not probe:
                    continue
                passed = await self.kubelet.probe(self, probe)
                if self.stopping.is_set() or proc.returncode is not None:
                    continue
                if passed:
                    failures = 0
                    if not ready:
                        ready = True
                        self._write_status(self._running(ready=True))
                else:
                    failures += 1
                    if ready and failures >= int(probe.get("failureThreshold", 3)):
                        ready = False
                        self._write_status(self._running(ready=False))
        finally:
            for task in (exited, stop):
                if not task.done():
                    task.cancel()

    async def _kill(self) -> None:
        """SIGTERM the process group, SIGKILL it after the grace period; reap the process."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(proc.wait()), self.grace)
        # Whatever the process left in its group goes too.
        _signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(proc.wait()), 5.0)

    # --- status ---

    def _container_status(self, ready: bool, state: Obj, last: Obj | None = None) -> Obj:
        pid = self.proc.pid if self.proc else 0
        status: Obj = {
            "name": self.container.get("name", ""),
            "state": state,
            "lastState": last or {},
            "ready": ready,
            "restartCount": self.restarts,
            "image": self.container.get("image", ""),
            "imageID": f"fake://{self.container.get('image', '')}",
            "started": "running" in state,
        }
        if pid:
            status["containerID"] = f"fake://{pid}"
        return status

    def _base(self, pod: Obj, ready: bool, phase: str) -> Obj:
        old = (pod.get("status") or {}).get("conditions") or []
        status = dict(pod.get("status") or {})
        status.update({
            "phase": phase,
            "conditions": [
                _condition("PodReadyToStartContainers", True, old),
                _condition("Initialized", True, old),
                _condition("Ready", ready, old),
                _condition("ContainersReady", ready, old),
                _condition("PodScheduled", True, old),
            ],
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "startTime": status.get("startTime") or now_time(),
        })
        return status

    def _running(self, ready: bool) -> Any:
        def change(pod: Obj) -> None:
            status = self._base(pod, ready, "Running")
            previous = ((pod.get("status") or {}).get("containerStatuses") or [{}])[0]
            status["containerStatuses"] = [self._container_status(
                ready, {"running": {"startedAt": self.started_at}},
                previous.get("lastState"))]
            pod["status"] = status
        return change

    def _terminated(self, code: int, final: bool) -> Any:
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                      "startedAt": self.started_at, "finishedAt": now_time()}

        def change(pod: Obj) -> None:
            if final:
                status = self._base(pod, False, "Succeeded" if code == 0 else "Failed")
                status["containerStatuses"] = [
                    self._container_status(False, {"terminated": terminated})]
            else:
                status = self._base(pod, False, "Running")
                status["containerStatuses"] = [self._container_status(
                    False, {"waiting": {"reason": "CrashLoopBackOff",
                                        "message": f"back-off restarting failed container "
                                                   f"{self.container.get('name', '')}"}},
                    {"terminated": terminated})]
            pod["status"] = status
        return change

    def _waiting(self, reason: str, message: str) -> Any:
        def change(pod: Obj) -> None:
            status = self._base(pod, False, "Pending")
            status["containerStatuses"] = [self._container_status(
                False, {"waiting": {"reason": reason, "message": message}})]
            pod["status"] = status
        return change

    def _write_status(self, change: Any) -> None:
        try:
            self.kubelet.registry.mutate(by_kind("Pod"), self.namespace, self.name, change,
                                         subresource="status")
        except ApiError as e:
            if e.code != 404:
                log.warning("pod %s/%s: status update failed: %s", self.namespace, self.name, e)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _deployment_of(pod: Obj) -> str | None:
    """The Deployment a pod belongs to: its ReplicaSet owner's name without the hash."""
    meta = pod["metadata"]
    template_hash = (meta.get("labels") or {}).get("pod-template-hash")
    for ref in meta.get("ownerReferences") or []:
        name = ref.get("name", "")
        if ref.get("kind") == "ReplicaSet" and template_hash and name.endswith(
                f"-{template_hash}"):
            return name[: -len(template_hash) - 1]
    return None


@dataclass(frozen=True)
class PodSettings:
    """How the fake kubelet runs every pod (see FakeKube's constructor)."""

    repo_root: Path  # the working directory of a container without an absolute workingDir
    log_dir: Path  # <namespace>_<pod>.log for each pod's output
    start_delay: float  # from the pod's creation to its process's start
    kill_after: float  # cap on the SIGTERM -> SIGKILL grace period
    restart_backoff: float  # first delay before a restart, doubling up to RESTART_BACKOFF_MAX
    markers: dict[str, str]  # environment variables every pod process carries


class Kubelet(ControlLoop):
    def __init__(self, store: Store, registry: Registry, settings: PodSettings) -> None:
        super().__init__("fake kubelet")
        self.store = store
        self.registry = registry
        self.settings = settings
        self.runners: dict[str, PodRunner] = {}
        self._session: aiohttp.ClientSession | None = None
        self._shutting_down = False

    def start(self) -> None:
        self.settings.log_dir.mkdir(parents=True, exist_ok=True)
        # Probes must never reuse a connection: each one is a fresh request, as the kubelet's.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        self.store.add_listener(self._on_event)
        super().start()

    def _on_event(self, event: Event) -> None:
        if event.resource == "/pods":
            self.wake()

    def step(self) -> None:
        """A process for every new pod; stop those of pods deleted or marked for deletion."""
        seen = set()
        for pod in self.store.items("/pods"):
            meta = pod["metadata"]
            uid = meta["uid"]
            seen.add(uid)
            runner = self.runners.get(uid)
            deleting = bool(meta.get("deletionTimestamp"))
            if runner is None:
                if deleting:
                    self._remove_pod(meta["namespace"], meta["name"], uid)
                elif (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    runner = PodRunner(self, pod)
                    self.runners[uid] = runner
                    runner.start()
            elif deleting:
                runner.stop(float(meta.get("deletionGracePeriodSeconds") or 0))
        for uid, runner in list(self.runners.items()):
            if uid not in seen:
                runner.stop(0)  # the object is gone (a forced delete): kill at once

    def finished(self, runner: PodRunner) -> None:
        self.runners.pop(runner.uid, None)
        if not self._shutting_down:
            self._remove_pod(runner.namespace, runner.name, runner.uid)

    def _remove_pod(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet's last word on a terminated pod: delete it for good."""
        current = self.store.get("/pods", namespace, name)
        if current is None or current["metadata"]["uid"] != uid:
            return
        if not current["metadata"].get("deletionTimestamp"):
            return  # it ended on its own (restartPolicy Never/OnFailure): it stays
        try:
            self.registry.delete(by_kind("Pod"), namespace, name,
                                 {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}})
        except ApiError as e:
            if e.code not in (404, 409):
                log.warning("pod %s/%s: final delete failed: %s", namespace, name, e)

    async def probe(self, runner: PodRunner, probe: Obj) -> bool:
        timeout = min(float(probe.get("timeoutSeconds", 1)), 1.0)
        try:
            return await asyncio.wait_for(self._probe(runner, probe), timeout)
        except (TimeoutError, OSError, aiohttp.ClientError):
            return False
        except Exception:
            # A probe the fake cannot run (a malformed spec) fails, as a real one would.
            log.exception("pod %s/%s: readiness probe failed to run", runner.namespace,
                          runner.name)
            return False

    async def _probe(self, runner: PodRunner, probe: Obj) -> bool:
        if "httpGet" in probe:
            get = probe["httpGet"]
            port = self._port(runner, get.get("port"))
            path = get.get("path") or "/"
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            assert self._session is not None
            async with self._session.get(f"http://{runner.ip}:{port}{path}", headers=headers,
                                         allow_redirects=False) as resp:
                return 200 <= resp.status < 400
        if "tcpSocket" in probe or "grpc" in probe:
            target = probe.get("tcpSocket") or probe.get("grpc") or {}
            _, writer = await asyncio.open_connection(runner.ip,
                                                      self._port(runner, target.get("port")))
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return True
        if "exec" in probe:
            return await self._exec_probe(runner, probe["exec"].get("command") or [])
        return True

    async def _exec_probe(self, runner: PodRunner, command: list[str]) -> bool:
        if not command:
            return False
        proc = await asyncio.create_subprocess_exec(
            *command, cwd=str(self.settings.repo_root), env=runner.environment(),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_die_with_parent)
        try:
            return await proc.wait() == 0
        finally:
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()

    @staticmethod
    def _port(runner: PodRunner, port: Any) -> int:
        if isinstance(port, int):
            return port
        for c in runner.spec.get("containers") or []:
            for p in c.get("ports") or []:
                if p.get("name") == port:
                    return int(p["containerPort"])
        raise OSError(f"port {port!r} is not a container port of the pod")

    def pids(self, namespace: str, deployment: str) -> list[int]:
        runners = [r for r in self.runners.values()
                   if r.namespace == namespace and r.owner == deployment and r.pid]
        return [r.pid for r in sorted(runners, key=lambda r: r.name) if r.pid]

    async def shutdown(self, grace: float = 1.0) -> None:
        """Stop every pod process (SIGTERM, then SIGKILL after `grace`) and wait for them."""
        self._shutting_down = True
        await self.stop()
        runners = list(self.runners.values())
        for runner in runners:
            runner.stop(grace)
        tasks = [r.task for r in runners if r.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace + 5.0)
            for task in pending:
                task.cancel()
            for runner in runners:
                if runner.proc is not None and runner.proc.returncode is None:
                    _signal_group(runner.proc.pid, signal.SIGKILL)
        if self._session is not None:
            await self._session.close()
