"""Test harness: real `wakegate up` processes on free loopback ports, real HTTP.

Every process a test starts carries WAKEGATE_TEST_RUN (this pytest run) and
WAKEGATE_TEST_INSTANCE (that wakegate) in its environment, which the services
it starts inherit; that is how the tests prove no process is left behind.
Processes are stopped by their pid, never by name.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .client import host as route_host
from .procs import processes_with

REPO = Path(__file__).resolve().parent.parent
HELLO = REPO / "examples" / "hello" / "app.py"
RUN_MARKER = uuid.uuid4().hex
START_DEADLINE = 20.0


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A free loopback port, never one this test process handed out before: the kernel
    may give the port it just freed to the next bind(0), and two calls in a row (a
    proxy's and a controller's port) then named the same one."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def hello_service(**overrides: Any) -> dict[str, Any]:
    """The example service, ready for a test config."""
    svc: dict[str, Any] = {
        "command": f"{{python}} {HELLO}",
        "version": "1.0.0",
        "readiness": {"http": "/healthz"},
        "environments": ["private", "demo"],
        "stop_grace": "2s",
    }
    svc.update(overrides)
    return svc


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               interval: float = 0.01) -> Any:
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


async def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """`wait_until` off the event loop, so that the requests a test holds keep running."""
    return await asyncio.to_thread(wait_until, predicate, timeout, what)


def stop_process(proc: subprocess.Popen[str] | None, name: str, sig: int,
                 timeout: float) -> int:
    """Signal a process by its pid and wait; SIGKILL (and fail) if it outlives `timeout`."""
    if proc is None:
        return 0
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"{name} did not stop within {timeout}s of {sig}") from None
    return proc.returncode


def process_env(marker: str, token: str | None) -> dict[str, str]:
    """The environment of a wakegate process a test starts: marked, and only its own token."""
    env = dict(os.environ)
    env["WAKEGATE_TEST_RUN"] = RUN_MARKER
    env["WAKEGATE_TEST_INSTANCE"] = marker
    env.pop("WAKEGATE_CONTROLLER", None)
    env.pop("WAKEGATE_TOKEN", None)
    if token:
        env["WAKEGATE_TOKEN"] = token
    return env


def metrics_text(base: str) -> str:
    """GET base/metrics: a Prometheus text exposition."""
    with urllib.request.urlopen(base + "/metrics", timeout=10) as resp:
        return str(resp.read().decode())


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None if absent."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, _, value = line.rpartition(" ")
        metric_name, _, label_text = head.partition("{")
        if metric_name != name:
            continue
        found = dict(
            part.split("=", 1) for part in label_text.rstrip("}").split(",") if "=" in part
        )
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


class Wakegate:
    """One `wakegate up` process and what a test asks of it."""

    def __init__(self, tmp: Path, config: dict[str, Any], name: str = "wakegate") -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.marker = uuid.uuid4().hex
        self.proxy_port = free_port()
        self.controller_port = free_port()
        self.config = config
        config.setdefault("listen", {})
        config["listen"].setdefault("proxy", f"127.0.0.1:{self.proxy_port}")
        config["listen"].setdefault("controller", f"127.0.0.1:{self.controller_port}")
        config.setdefault("state_dir", str(self.dir / "state"))
        self.state_dir = Path(config["state_dir"])
        self.config_path = self.dir / "wakegate.yaml"
        self.write_config()
        self.stdout: list[str] = []
        self._up_seen = threading.Event()
        self.stderr_path = self.dir / "wakegate.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self.token: str | None = None  # WAKEGATE_TOKEN, given to wakegate and sent by api()

    # --- lifecycle ---

    def write_config(self) -> None:
        """(Re)write the config file from `self.config`."""
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    def argv(self) -> list[str]:
        """The wakegate command line after `wakegate`."""
        return ["up", "-c", str(self.config_path)]

    def env(self) -> dict[str, str]:
        return process_env(self.marker, self.token)

    def start(self) -> Wakegate:
        self._up_seen.clear()
        self.stdout.clear()
        with open(self.stderr_path, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", *self.argv()],
                cwd=REPO, env=self.env(), stdout=subprocess.PIPE, stderr=err, text=True,
                stdin=subprocess.DEVNULL,
            )
        threading.Thread(target=self._read_stdout, args=(self.proc,), daemon=True).start()
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(
                    f"wakegate exited with {proc.returncode} while starting:\n{self.stderr()}"
                )
            return self._up_seen.is_set()

        wait_until(up, START_DEADLINE, "wakegate to print that it is up")
        return self

    def run_to_exit(self, timeout: float = START_DEADLINE) -> tuple[int, str]:
        """Run it expecting it to refuse to start: (exit status, stderr)."""
        result = subprocess.run(
            [sys.executable, "-m", "controller.cli", *self.argv()], cwd=REPO, env=self.env(),
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )
        return result.returncode, result.stderr

    def _read_stdout(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.stdout.append(line.rstrip("\n"))
            if line.startswith("Press Ctrl-C"):
                self._up_seen.set()

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc, self.proc = self.proc, None
        return stop_process(proc, "wakegate", sig, timeout)

    def leftovers(self) -> list[int]:
        return processes_with("WAKEGATE_TEST_INSTANCE", self.marker)

    def assert_no_leftovers(self, timeout: float = 5.0) -> None:
        wait_until(lambda: not self.leftovers(), timeout,
                   f"processes of this wakegate to be gone: {self.leftovers()}")

    # --- what a test reads ---

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def controller(self) -> str:
        return f"http://127.0.0.1:{self.controller_port}"

    @staticmethod
    def host(service: str, environment: str) -> str:
        return route_host(service, environment)

    def new_keys(self) -> dict[str, str]:
        """{"private/hello": key} from the keys `up` printed."""
        keys, name = {}, None
        for line in self.stdout:
            if line.startswith("New API key for "):
                name = line[len("New API key for "):].split(" ", 1)[0]
            elif name and line.strip().startswith("wg_"):
                keys[name] = line.strip()
                name = None
        return keys

    def api_token(self) -> str:
        """The controller API's token: WAKEGATE_TOKEN if the test set one, else the one
        wakegate made in state_dir at its first start."""
        return self.token or (self.state_dir / "api-token").read_text().strip()

    def api(self, path: str) -> Any:
        status, body, _ = self.call("GET", path)
        assert status == 200, (path, status, body)
        return body

    _TOKEN: Any = object()  # call(): send the API token

    def call(self, method: str, path: str, body: Any = None, token: Any = _TOKEN,
             headers: dict[str, str] | None = None, timeout: float = 30.0,
             ) -> tuple[int, Any, Any]:
        """(status, JSON body or None, response headers) of one controller API call.

        `body` is sent as JSON (bytes: as they are); `token` defaults to the API token, None
        sends none."""
        data = body if isinstance(body, bytes) else \
            json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.controller + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        sent = self.api_token() if token is Wakegate._TOKEN else token
        if sent is not None:
            request.add_header("Authorization", f"Bearer {sent}")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as resp:
                status, raw, got = resp.status, resp.read(), resp.headers
        except urllib.error.HTTPError as exc:
            status, raw, got = exc.code, exc.read(), exc.headers
        return status, json.loads(raw) if raw else None, got

    def status(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["environment"], r["service"]): r for r in self.api("/v1/status")["instances"]}

    def state(self, environment: str, service: str) -> str:
        return str(self.status()[(environment, service)]["state"])

    def wait_state(self, environment: str, service: str, state: str,
                   timeout: float = 10.0) -> None:
        wait_until(lambda: self.state(environment, service) == state, timeout,
                   f"{environment}/{service} to be {state}")

    def metrics_text(self, base: str | None = None) -> str:
        return metrics_text(base or self.base)

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample from the proxy's /metrics, or None if absent."""
        return metric_value(self.metrics_text(), name, **labels)

    def cli(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """`wakegate ARGS -c <this config>`: as a user runs it (the CLI reads the API token
        from the config's state_dir, or from WAKEGATE_TOKEN when the test set one)."""
        if "-c" not in args and "--config" not in args:
            args = (*args, "-c", str(self.config_path))
        result = subprocess.run(
            [sys.executable, "-m", "controller.cli", *args],
            cwd=REPO, env={**self.env(), "WAKEGATE_CONTROLLER": self.controller},
            capture_output=True, text=True, timeout=30,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def service_pids(self) -> list[int]:
        """Pids of the service processes (not wakegate itself)."""
        own = self.proc.pid if self.proc else -1
        return [p for p in self.leftovers() if p != own]

    def log_of(self, environment: str, service: str) -> str:
        path = self.state_dir / "logs" / f"{environment}.{service}.log"
        return path.read_text() if path.exists() else ""

    def starts(self, environment: str, service: str) -> int:
        """How many times the service was started: the runtime marks each start in its log."""
        return self.log_of(environment, service).count("--- wakegate: starting")


# Deployments a test module can run in (see tests/modes.py).
MODES = ("up", "split", "kubernetes")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize `wakegate_mode` by the test's `modes` marker (default: every mode)."""
    if "wakegate_mode" in metafunc.fixturenames:
        marker = metafunc.definition.get_closest_marker("modes")
        metafunc.parametrize("wakegate_mode", marker.args if marker else MODES)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Any]:
    """A fake Kubernetes cluster (tests/kube/) for this test; closed at the end."""
    from .kube_cluster import Cluster

    c = Cluster(tmp_path / "kube", start_delay=0.05)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def wakegate(_wakegate_up: Callable[..., Wakegate]) -> Callable[..., Wakegate]:
    """Start a wakegate with a config dict; stopped (and checked for leftovers) at the end."""
    return _wakegate_up


@pytest.fixture
def _wakegate_up(tmp_path: Path) -> Iterator[Callable[..., Wakegate]]:
    started: list[Wakegate] = []

    def start(config: dict[str, Any], name: str = "wakegate") -> Wakegate:
        wg = Wakegate(tmp_path, config, name)
        started.append(wg)
        return wg.start()

    yield start
    stop_all(started)


# --- split mode: `wakegate controller` + N `wakegate proxy` processes ---


class Controller(Wakegate):
    """A `wakegate controller` process: the Scaler and its API, no proxy."""

    def argv(self) -> list[str]:
        return ["controller", "-c", str(self.config_path)]


class ProxyProcess:
    """One `wakegate proxy` process on a free loopback port, fed by a controller."""

    def __init__(self, tmp: Path, name: str, controller: Controller,
                 report_interval: str, token: str | None) -> None:
        self.dir = tmp / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.marker = uuid.uuid4().hex
        self.port = free_port()
        self.controller = controller
        self.report_interval = report_interval
        self.token = token
        self.stderr_path = self.dir / "proxy.stderr"
        self.proc: subprocess.Popen[str] | None = None
        self._up_seen = threading.Event()

    def env(self) -> dict[str, str]:
        return process_env(self.marker, self.token)

    def launch(self) -> ProxyProcess:
        """Start the process; `wait_up` waits for it to listen."""
        self._up_seen.clear()
        with open(self.stderr_path, "a") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "controller.cli", "proxy",
                 "-c", str(self.controller.config_path),
                 "--controller", self.controller.controller,
                 "--listen", f"127.0.0.1:{self.port}",
                 "--report-interval", self.report_interval],
                cwd=REPO, env=self.env(), stdout=subprocess.PIPE, stderr=err, text=True,
                stdin=subprocess.DEVNULL,
            )
        proc = self.proc

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                if line.startswith("Press Ctrl-C"):
                    self._up_seen.set()

        threading.Thread(target=read, daemon=True).start()
        return self

    def wait_up(self, table: bool = True) -> ProxyProcess:
        """Until it listens and (with `table`) has a route table (/readyz 200)."""
        proc = self.proc
        assert proc is not None

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {proc.returncode} while "
                                     f"starting:\n{self.stderr()}")
            return self._up_seen.is_set() and (not table or self.readyz() == 200)

        wait_until(up, START_DEADLINE, f"{self.name} to be up")
        return self

    def readyz(self) -> int:
        try:
            with urllib.request.urlopen(self.base + "/readyz", timeout=5) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        proc, self.proc = self.proc, None
        return stop_process(proc, self.name, sig, timeout)

    def leftovers(self) -> list[int]:
        return processes_with("WAKEGATE_TEST_INSTANCE", self.marker)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metric(self, name: str, **labels: str) -> float | None:
        return metric_value(metrics_text(self.base), name, **labels)


class Split:
    """One controller and the proxies that share it."""

    def __init__(self, tmp: Path, controller: Controller, report_interval: str,
                 token: str | None) -> None:
        self.tmp = tmp
        self.controller = controller
        self.report_interval = report_interval
        self.token = token
        self.proxies: list[ProxyProcess] = []
        self.keys: dict[str, str] = {}

    def add_proxy(self, wait: bool = True, without_token: bool = False) -> ProxyProcess:
        """Start one more proxy, given the controller's token unless `without_token`."""
        name = f"proxy{len(self.proxies)}"
        proxy = ProxyProcess(self.tmp, name, self.controller, self.report_interval,
                             None if without_token else self.token)
        self.proxies.append(proxy)
        proxy.launch()
        return proxy.wait_up() if wait else proxy

    def restart_controller(self, sig: int = signal.SIGTERM) -> None:
        self.controller.stop(sig)
        self.controller.start()

    # --- what a test reads ---

    def status(self) -> dict[tuple[str, str], dict[str, Any]]:
        return self.controller.status()

    def state(self, environment: str, service: str) -> str:
        return self.controller.state(environment, service)

    def wait_state(self, environment: str, service: str, state: str,
                   timeout: float = 10.0) -> None:
        self.controller.wait_state(environment, service, state, timeout)

    def live_proxies(self) -> list[dict[str, Any]]:
        return list(self.controller.api("/v1/proxies")["proxies"])

    def wait_tables_current(self, timeout: float = 10.0) -> None:
        """Until every running proxy has reported the controller's current route table
        (a proxy applies each table on its own watch: moments apart, under load more)."""
        def current() -> bool:
            answer = self.controller.api("/v1/proxies")
            tables = [p["table"] for p in answer["proxies"]]
            running = sum(1 for p in self.proxies if p.proc is not None)
            return len(tables) >= running and all(
                t == {"epoch": answer["epoch"], "version": answer["version"]} for t in tables)

        wait_until(current, timeout, "every proxy to have the current route table")

    def metric_total(self, name: str, **labels: str) -> float:
        """The sum of one sample over every running proxy."""
        return sum(p.metric(name, **labels) or 0.0 for p in self.proxies if p.proc)

    def controller_metric(self, name: str, **labels: str) -> float | None:
        return metric_value(self.controller.metrics_text(self.controller.controller), name,
                            **labels)

    def service_pids(self) -> list[int]:
        return self.controller.service_pids()

    def log_of(self, environment: str, service: str) -> str:
        return self.controller.log_of(environment, service)


@pytest.fixture
def split(tmp_path: Path) -> Iterator[Callable[..., Split]]:
    """Start a controller and N proxies (all on free loopback ports); all stopped by pid at
    the end, even on failure, and checked for leftovers."""
    started: list[Split] = []

    def start(config: dict[str, Any], proxies: int = 2, token: str | None = None,
              report_interval: str = "100ms") -> Split:
        controller = Controller(tmp_path, config, "controller")
        controller.token = token
        deployment = Split(tmp_path, controller, report_interval, token)
        started.append(deployment)
        controller.start()
        deployment.keys = controller.new_keys()
        for _ in range(proxies):  # started together, waited for together
            deployment.add_proxy(wait=False)
        for proxy in deployment.proxies:
            proxy.wait_up()
        return deployment

    yield start
    everything: list[Any] = []
    for deployment in started:
        everything.extend(deployment.proxies)
        everything.append(deployment.controller)
    stop_all(everything)


def stop_all(processes: list[Any]) -> None:
    """Stop each process (they have stop() and leftovers()); none may be left behind."""
    problems: list[str] = []
    for process in processes:
        try:
            process.stop()
        except AssertionError as exc:
            problems.append(str(exc))
        finally:
            for pid in process.leftovers():
                os.kill(pid, signal.SIGKILL)
    for process in processes:
        wait_until(lambda p=process: not p.leftovers(), 5.0, "processes left behind")
    assert not problems, problems


@pytest.fixture(scope="session", autouse=True)
def no_orphans_after_the_run() -> Iterator[None]:
    yield
    wait_until(lambda: not processes_with("WAKEGATE_TEST_RUN", RUN_MARKER), 10.0,
               "every process started by the tests to be gone")
