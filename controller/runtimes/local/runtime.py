"""The embedded runtime: each replica is a local process started from the service's command.

A replica gets a free loopback port in PORT and its version in
WAKEGATE_VERSION, runs in a process group of its own (so stopping it stops
whatever it spawned) and dies with wakegate (PR_SET_PDEATHSIG), so no process
outlives wakegate even when wakegate is killed. Readiness is probed every few
milliseconds while the process's exit is watched: a process that exits while
starting fails the activation at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shlex
import signal
import socket
import sys
import time

from ...keys import KeyStore
from ...spec import Config, InstanceSpec, Readiness
from ..base import RuntimeEvents, StartFailed
from .colours import LocalColours
from .ephemeral import LocalEphemeral

__all__ = ["LocalRuntime", "Replica", "StartFailed", "die_with_parent"]

log = logging.getLogger("wakegate.runtime")

_PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)

# Probe quickly at first, then a little less often: readiness is seen within
# milliseconds of the probe passing without hammering a slow starter.
_PROBE_FIRST_INTERVAL = 0.002
_PROBE_MAX_INTERVAL = 0.02
# Variables of wakegate's own that a service has no business seeing.
_PRIVATE_ENV = ("WAKEGATE_TOKEN",)


class Replica:
    __slots__ = (
        "endpoint", "exited", "log_path", "pid", "port", "proc", "ready", "stopping", "watcher",
    )

    def __init__(self, proc: asyncio.subprocess.Process, port: int, log_path: str) -> None:
        self.proc = proc
        self.pid = proc.pid
        self.port = port
        self.endpoint = f"127.0.0.1:{port}"
        self.log_path = log_path
        self.stopping = False
        self.ready = False
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.watcher: asyncio.Future[None] | None = None


def die_with_parent(sig: int) -> None:
    """Have the kernel send `sig` to this process when its parent dies (Linux prctl).

    Runs in the child between fork and exec (preexec_fn)."""
    _libc.prctl(_PR_SET_PDEATHSIG, sig)


def _die_with_parent() -> None:
    die_with_parent(signal.SIGKILL)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_argv(command: str, port: int, version: str) -> list[str]:
    """Split first, then fill placeholders, so a value can never add arguments."""
    values = {"port": str(port), "version": version, "python": sys.executable}
    return [part.format_map(values) for part in shlex.split(command)]


class LocalRuntime:
    self_healing = False
    versions_on_objects = False  # versions live in state_dir (controller/versions.py)

    def __init__(self, config: Config) -> None:
        self._config = config
        self._events: RuntimeEvents | None = None
        self._live: set[Replica] = set()
        self._log_dir = os.path.join(config.state_dir, "logs")
        # Both read their state_dir file here: one that is not valid raises StateFileError.
        self.keys = KeyStore(config.state_dir)
        self.colours = LocalColours(self, config.state_dir)
        self.ephemeral = LocalEphemeral(config.state_dir)

    async def open(self, events: RuntimeEvents) -> None:
        self._events = events

    def config_changed(self, config: Config) -> None:
        return None  # what it uses (state_dir, base_dir) needs a restart to change

    async def set_version(self, inst: InstanceSpec, version: str) -> None:
        raise NotImplementedError("local versions live in state_dir (controller/versions.py)")

    def autoscaled_elsewhere(self, inst: InstanceSpec) -> bool:
        return False  # only wakegate starts local processes

    def log_path(self, inst: InstanceSpec) -> str:
        return os.path.join(self._log_dir, f"{inst.environment.name}.{inst.service.name}.log")

    async def start(self, inst: InstanceSpec, version: str, count: int) -> list[Replica]:
        """Start `count` replicas and return them once all are ready; on failure none is left."""
        results = await asyncio.gather(
            *(self._start_one(inst, version) for _ in range(count)), return_exceptions=True
        )
        started = [r for r in results if isinstance(r, Replica)]
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            await self.stop(started, inst.service.stop_grace)
            raise failures[0]
        return started

    async def _start_one(self, inst: InstanceSpec, version: str) -> Replica:
        svc = inst.service
        port = free_port()
        argv = command_argv(svc.command, port, version)
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_ENV}
        env.update(svc.env)
        env.update(
            PORT=str(port),
            WAKEGATE_VERSION=version,
            WAKEGATE_SERVICE=svc.name,
            WAKEGATE_ENVIRONMENT=inst.environment.name,
            WAKEGATE_PREFIX=inst.environment.prefix,
        )
        log_path = self.log_path(inst)
        os.makedirs(self._log_dir, exist_ok=True)
        with open(log_path, "ab") as out:
            out.write(
                f"--- wakegate: starting {inst.name} version {version} on port {port} at "
                f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode()
            )
            out.flush()
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    cwd=self._config.base_dir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise StartFailed(f"cannot run {argv[0]!r}: {exc.strerror}") from None
        replica = Replica(proc, port, log_path)
        self._live.add(replica)
        replica.watcher = asyncio.ensure_future(self._watch(inst.key, replica))
        try:
            await self._wait_ready(replica, svc.readiness, svc.start_timeout)
        except BaseException:
            await self._stop_one(replica, svc.stop_grace)
            raise
        replica.ready = True
        return replica

    async def _watch(self, key: tuple[str, str], replica: Replica) -> None:
        code = await replica.proc.wait()
        self._live.discard(replica)
        # Whatever the service left behind in its group goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(replica.pid, signal.SIGKILL)
        replica.exited.set_result(code)
        if replica.ready and not replica.stopping and self._events is not None:
            self._events.replica_exited(key, replica, code)

    async def _wait_ready(self, replica: Replica, readiness: Readiness, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        interval = _PROBE_FIRST_INTERVAL
        while True:
            if replica.exited.done():
                raise StartFailed(
                    f"the process exited with status {replica.exited.result()} while starting "
                    f"(see {replica.log_path})"
                )
            if await _probe(replica.port, readiness):
                return
            if time.monotonic() >= deadline:
                raise StartFailed(f"not ready within {timeout:g}s (see {replica.log_path})")
            await asyncio.wait((replica.exited,), timeout=interval)
            interval = min(interval * 1.5, _PROBE_MAX_INTERVAL)

    async def stop(self, replicas: list[Replica], grace: float) -> None:
        await asyncio.gather(*(self._stop_one(r, grace) for r in replicas))

    async def _stop_one(self, replica: Replica, grace: float) -> None:
        replica.stopping = True
        if replica.exited.done():
            return
        _signal_group(replica.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(replica.exited), grace)
        except TimeoutError:
            log.warning("pid %d did not stop within %gs of SIGTERM: SIGKILL", replica.pid, grace)
            _signal_group(replica.pid, signal.SIGKILL)
            await replica.exited

    async def shutdown(self, grace: float) -> None:
        await self.stop(list(self._live), grace)

    def kill_all_now(self) -> None:
        """Last resort on the way out: no await, no grace."""
        for replica in list(self._live):
            replica.stopping = True
            _signal_group(replica.pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


async def _probe(port: int, readiness: Readiness) -> bool:
    try:
        async with asyncio.timeout(readiness.timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if readiness.tcp or readiness.http_path is None:
                    return True
                writer.write(
                    f"GET {readiness.http_path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    "User-Agent: wakegate-probe\r\nConnection: close\r\n\r\n".encode()
                )
                status_line = await reader.readline()
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return False
    parts = status_line.split()
    return len(parts) >= 2 and parts[1][:1] in (b"2", b"3")
