"""FakeKube: the fake API server, its controllers and its kubelet, on a thread of their own.

The fake cluster runs its own event loop in a background thread, as a real API
server is a separate process: a test that blocks (time.sleep, urllib, waiting on
a subprocess) cannot freeze it, and it works the same from async and sync tests.
Every hook below runs its work on that loop and waits for the answer.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import os
import secrets
import signal
import ssl
import sys
import threading
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml
from aiohttp import web

from ..procs import processes_with
from .api import ApiServer
from .controllers import NAMESPACE_DELETION_GRACE, Controllers
from .errors import ApiError
from .kubelet import Kubelet, PodSettings
from .registry import Registry
from .resources import by_api_version_kind, by_kind
from .store import Store
from .tls import credentials

Obj = dict[str, Any]
T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
# The namespaces every cluster starts with.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
# How long a hook waits for the fake cluster's loop before giving up.
CALL_TIMEOUT = 30.0


def _run_marker() -> str | None:
    """The test run's marker (see tests/conftest.py), so pods count as this run's processes."""
    if os.environ.get("WAKEGATE_TEST_RUN"):
        return os.environ["WAKEGATE_TEST_RUN"]
    conftest = sys.modules.get("tests.conftest")
    marker = getattr(conftest, "RUN_MARKER", None)
    return marker if isinstance(marker, str) else None


class _Cluster:
    """Everything that lives on the fake cluster's loop."""

    def __init__(self, directory: Path, token: str, marker: str, *, start_delay: float,
                 history: int, bookmark_interval: float, kill_after: float,
                 restart_backoff: float, namespace_deletion_grace: float) -> None:
        self.directory = directory
        self.marker = marker
        self.store = Store(history)
        self.registry = Registry(self.store)
        self.api = ApiServer(self.store, self.registry, token, bookmark_interval)
        self.controllers = Controllers(self.store, self.registry, namespace_deletion_grace)
        markers = {"WAKEGATE_TEST_INSTANCE": marker}
        run = _run_marker()
        if run:
            markers["WAKEGATE_TEST_RUN"] = run
        self.kubelet = Kubelet(self.store, self.registry, PodSettings(
            repo_root=REPO_ROOT, log_dir=directory / "pods", start_delay=start_delay,
            kill_after=kill_after, restart_backoff=restart_backoff, markers=markers))
        self.runner: web.AppRunner | None = None

    async def start(self) -> str:
        for name in SYSTEM_NAMESPACES:
            self.registry.create(by_kind("Namespace"), None, {
                "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        # handler_cancellation: a watch whose client went away ends at once.
        self.runner = web.AppRunner(self.api.app(), access_log=None,
                                    handler_cancellation=True, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0,
                           ssl_context=credentials().server_context())
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.api.server_address = f"{host}:{port}"
        self.controllers.start()
        self.kubelet.start()
        return f"https://{host}:{port}"

    async def stop(self) -> None:
        try:
            await self.controllers.stop()
            await self.kubelet.shutdown()
        finally:
            self.api.hub.drop_all()
            if self.runner is not None:
                await self.runner.cleanup()
                self.runner = None
            await self._reap_leftovers()

    async def _reap_leftovers(self) -> None:
        # Anything a pod spawned outside its process group still carries our marker.
        for pid in processes_with("WAKEGATE_TEST_INSTANCE", self.marker):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while left := processes_with("WAKEGATE_TEST_INSTANCE", self.marker):
            if loop.time() > deadline:
                raise AssertionError(f"fake kubelet processes left behind: {left}")
            await asyncio.sleep(0.01)


class FakeKube:
    """A Kubernetes API server on a free loopback port, with Deployments that run real processes.

        async with FakeKube(tmp_path) as kube:     # or, in a sync test: with FakeKube(...)
            api = await config.new_client_from_config(config_file=kube.kubeconfig)

    Pods run `command + args` of their first container from the repository root,
    with PORT, HOST and POD_IP set (see kubelet.py). Stopping the fake stops
    every process it started, by pid, and fails if one is left.
    """

    def __init__(self, directory: Path | str, *, start_delay: float = 0.05, history: int = 1000,
                 token: str | None = None, bookmark_interval: float = 60.0,
                 kill_after: float = 5.0, restart_backoff: float = 0.1,
                 namespace_deletion_grace: float = NAMESPACE_DELETION_GRACE) -> None:
        self.directory = Path(directory)
        self.token = token or secrets.token_urlsafe(24)
        # Every pod process carries WAKEGATE_TEST_INSTANCE=<marker> in its environment.
        self.marker = uuid.uuid4().hex
        self.url = ""
        self.kubeconfig = str(self.directory / "kubeconfig")
        self._options: dict[str, Any] = {
            "start_delay": start_delay, "history": history,
            "bookmark_interval": bookmark_interval, "kill_after": kill_after,
            "restart_backoff": restart_backoff,
            "namespace_deletion_grace": namespace_deletion_grace}
        self._cluster: _Cluster | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ---

    async def __aenter__(self) -> FakeKube:
        return await self.start()

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    def __enter__(self) -> FakeKube:
        self._begin()
        try:
            self._submit(self._start()).result(CALL_TIMEOUT)
        except BaseException:
            self._end()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self._end()

    async def start(self) -> FakeKube:
        self._begin()
        try:
            await asyncio.wrap_future(self._submit(self._start()))
        except BaseException:
            await asyncio.to_thread(self._end)
            raise
        return self

    async def stop(self) -> None:
        """Stop the loops, every pod process (by pid) and the server; check nothing is left."""
        await asyncio.to_thread(self._end)

    def _begin(self) -> None:
        if self._thread is not None:
            raise RuntimeError("this FakeKube is already running")
        self.directory.mkdir(parents=True, exist_ok=True)
        started = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        # A daemon thread: if a test run dies without stopping it, the interpreter still
        # exits, and the pods die with it (PR_SET_PDEATHSIG).
        self._thread = threading.Thread(target=run, name="fake-kube", daemon=True)
        self._thread.start()
        started.wait()

    async def _start(self) -> None:
        self._cluster = _Cluster(self.directory, self.token, self.marker, **self._options)
        self.url = await self._cluster.start()
        self._write_kubeconfig()

    def _end(self) -> None:
        """Stop the cluster (if it started) and the thread; re-raise what went wrong."""
        if self._thread is None or self._loop is None:
            return
        try:
            if self._cluster is not None:
                self._submit(self._cluster.stop()).result(CALL_TIMEOUT)
        finally:
            self._cluster = None
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(CALL_TIMEOUT)
            self._thread = None
            self._loop = None

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        assert self._loop is not None, "the FakeKube is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def _on_loop(self, fn: Callable[[_Cluster], T]) -> T:
        """Run `fn` on the fake cluster's loop (where its state lives) and return its result."""
        cluster = self._cluster
        if cluster is None:
            raise RuntimeError("the FakeKube is not running")
        if threading.current_thread() is self._thread:
            raise RuntimeError("FakeKube hooks are for tests, not for the fake's own loop")

        async def call() -> T:
            return fn(cluster)

        return self._submit(call()).result(CALL_TIMEOUT)

    def _write_kubeconfig(self) -> None:
        ca_data = base64.b64encode(credentials().ca_pem).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {
                "server": self.url, "certificate-authority-data": ca_data}}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": "default"}}],
            "current-context": "fake",
            "preferences": {},
        }
        path = Path(self.kubeconfig)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    def ssl_context(self) -> ssl.SSLContext:
        """For a raw HTTP client (urllib, aiohttp): trusts the fake's CA, as kubectl does."""
        return credentials().client_context()

    # --- direct access for tests ---

    async def create(self, obj: Obj) -> Obj:
        """Create an object as a POST would (validation, resourceVersion, events).

        Raises tests.kube.ApiError (.code, .status()) when the API server would refuse it.
        A namespaced object without metadata.namespace goes to "default".
        """
        return await asyncio.to_thread(self.create_sync, obj)

    def create_sync(self, obj: Obj) -> Obj:
        """create() for sync tests."""
        rt = by_api_version_kind(obj.get("apiVersion", ""), obj.get("kind", ""))
        if rt is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource",
                           {})
        namespace = None
        if rt.namespaced:
            namespace = (obj.get("metadata") or {}).get("namespace") or "default"
        return self._on_loop(lambda c: c.registry.create(rt, namespace, obj))

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        """An object straight from the store (kind as `Deployment`, `deployments`, ...)."""
        rt = by_kind(kind)
        ns = (namespace or "") if rt.namespaced else ""
        return self._on_loop(lambda c: c.store.get(rt.key, ns, name))

    def list(self, kind: str, namespace: str | None = None) -> list[Obj]:
        """Objects of a kind straight from the store, in one namespace or all."""
        rt = by_kind(kind)
        return self._on_loop(lambda c: c.store.items(rt.key, namespace))

    def compact(self) -> None:
        """Drop the event history: a watch from any earlier resourceVersion now gets 410."""
        self._on_loop(lambda c: c.store.compact())

    def drop_watches(self) -> None:
        """Abort every open watch connection, as a crashing API server would."""
        self._on_loop(lambda c: c.api.hub.drop_all())

    def set_namespace_deletion_grace(self, seconds: float) -> None:
        """How long a deleted namespace waits before it is emptied (5 s, as a real cluster's
        namespace controller waits), from the next deletion on."""
        self._on_loop(lambda c: setattr(c.controllers, "namespace_deletion_grace", seconds))

    def fail_next(self, count: int, status: int = 500) -> None:
        """Fail the next `count` resource requests with `status` and a matching Status body."""
        self._on_loop(lambda c: c.api.faults.extend([status] * count))

    @property
    def requests_seen(self) -> set[tuple[str, str, str, str]]:
        """(group or "", resource, subresource or "", RBAC verb) of every authenticated
        resource request so far (a copy; see clear_requests_seen)."""
        return self._on_loop(lambda c: set(c.api.requests_seen))

    def clear_requests_seen(self) -> None:
        self._on_loop(lambda c: c.api.requests_seen.clear())

    @property
    def open_watches(self) -> int:
        return self._on_loop(lambda c: len(c.api.hub))

    @property
    def resource_version(self) -> str:
        """The store's current resourceVersion."""
        return self._on_loop(lambda c: str(c.store.rv))

    def pod_pids(self, namespace: str, deployment: str) -> list[int]:
        """Pids of the running pod processes of a Deployment, by pod name."""
        return self._on_loop(lambda c: c.kubelet.pids(namespace, deployment))
