"""wakegate's life as its operator sees it: start, status, stop, logs, metrics.

No process outlives wakegate (SIGTERM, Ctrl-C, or wakegate itself killed), a
service that ignores SIGTERM is killed after its stop_grace, `up` and `status`
print what they promise, bad configs and taken ports fail cleanly, every
instance has a log, and /metrics carries the metric names of docs/contract.md.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from .client import get
from .conftest import HELLO, REPO, Wakegate, hello_service, wait_until

StartWakegate = Callable[..., Wakegate]

EXAMPLE_CONFIG = REPO / "examples" / "wakegate.yaml"
STATUS_COLUMNS = ["ENVIRONMENT", "SERVICE", "STATE", "REPLICAS", "VERSION", "PREFIX", "TAG",
                  "IDLE", "URL"]

PROXY_METRICS = (
    "wakegate_requests_total",
    "wakegate_request_duration_seconds",
    "wakegate_requests_in_flight",
    "wakegate_held_requests",
    "wakegate_cold_starts_total",
    "wakegate_cold_start_duration_seconds",
    "wakegate_auth_failures_total",
)
CONTROLLER_METRICS = (
    "wakegate_instance_replicas",
    "wakegate_instance_desired_replicas",
    "wakegate_instance_max_replicas",
    "wakegate_instance_idle_seconds",
    "wakegate_instance_last_request_timestamp_seconds",
    "wakegate_scale_events_total",
)
ALLOWED_LABELS = {"environment", "service", "code", "result", "reason", "direction", "colour",
                  "le"}

# A service that will not stop on SIGTERM: it says so in its log and carries on.
STUBBORN_SERVICE = '''\
import os
import signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def refuse(signum, frame):
    print("stubborn: got SIGTERM, ignoring it", flush=True)


signal.signal(signal.SIGTERM, refuse)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


print("stubborn: listening", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''


# --- helpers ---


def three_environments() -> dict[str, Any]:
    """private and demo sleep; production keeps two replicas up."""
    return {
        "environments": {"private": {}, "demo": {}, "production": {"min_replicas": 2}},
        "services": {"hello": hello_service(environments=["private", "demo", "production"])},
    }


def replicas_ready(wg: Wakegate, environment: str, service: str, n: int) -> bool:
    row = wg.status()[(environment, service)]
    return bool(row["state"] == "ready" and row["replicas"] == n)


def run_up(wg: Wakegate, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    """`wakegate up` on wg's config file, expected to exit by itself."""
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "up", "-c", str(wg.config_path)],
        cwd=REPO, env=wg.env(), capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def refuses_connections(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


# --- no orphans ---


async def three_running(wakegate: StartWakegate) -> Wakegate:
    """A wakegate with three_environments(): production's two replicas ready, demo woken."""
    wg = wakegate(three_environments())
    wait_until(lambda: replicas_ready(wg, "production", "hello", 2), 10.0,
               "production's two replicas to be ready")
    async with aiohttp.ClientSession() as http:
        status, _, _ = await get(http, wg, "hello", "demo")
        assert status == 200
    return wg


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_stopping_wakegate_stops_every_service_process(
    wakegate: StartWakegate, sig: signal.Signals,
) -> None:
    wg = await three_running(wakegate)
    assert len(wg.service_pids()) == 3, "demo (1) and production (2) should be running"

    code = wg.stop(sig)
    assert code == 0, f"wakegate exited with {code} on {sig.name}:\n{wg.stderr()}"
    wg.assert_no_leftovers(timeout=5.0)


async def test_killing_wakegate_kills_its_services(wakegate: StartWakegate) -> None:
    wg = await three_running(wakegate)
    services = wg.service_pids()
    assert len(services) == 3

    assert wg.proc is not None
    wg.proc.kill()  # a crash: wakegate gets no chance to clean up
    wg.proc.wait(5)
    wait_until(lambda: not wg.leftovers(), 3.0,
               f"the services of a killed wakegate to die with it: {wg.leftovers()}")
    assert wg.stop() == -signal.SIGKILL


async def test_a_service_that_ignores_sigterm_is_killed_after_stop_grace(
    wakegate: StartWakegate, tmp_path: Path,
) -> None:
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN_SERVICE)
    wg = wakegate({
        "environments": {"demo": {"idle_timeout": "300ms"}},
        "services": {"stubborn": {
            "command": f"{{python}} {script}",
            "environments": ["demo"],
            "stop_grace": "300ms",
        }},
    })
    async with aiohttp.ClientSession() as http:
        answer = await get(http, wg, "stubborn", "demo")
        status, body = answer.status, answer.text
        assert status == 200
        pid = int(body)
        answered = time.monotonic()
        assert wg.service_pids() == [pid]

        wait_until(lambda: pid not in wg.leftovers(), 3.0,
                   "the service that ignores SIGTERM to be gone after idle_timeout + stop_grace")
        gone_after = time.monotonic() - answered
        wg.wait_state("demo", "stubborn", "sleeping", timeout=2.0)
        # It did get SIGTERM, refused it, and was killed anyway...
        assert "got SIGTERM, ignoring it" in wg.log_of("demo", "stubborn")
        # ...but only after its grace: idle 300 ms + grace 300 ms.
        assert gone_after >= 0.5, f"killed {gone_after:.2f}s after its last request"

        # wakegate's own shutdown does not hang on it either.
        answer = await get(http, wg, "stubborn", "demo")
        status, body = answer.status, answer.text
        assert status == 200
        assert wg.service_pids() == [int(body)]
    started = time.monotonic()
    assert wg.stop(signal.SIGTERM, timeout=10.0) == 0
    assert time.monotonic() - started < 5.0
    wg.assert_no_leftovers(timeout=3.0)


# --- status ---


async def test_status_shows_every_instance(wakegate: StartWakegate) -> None:
    wg = wakegate({"environments": {"private": {}, "demo": {}},
                   "services": {"hello": hello_service(version="1.2.3")}})
    async with aiohttp.ClientSession() as http:
        status, _, _ = await get(http, wg, "hello", "demo")
        assert status == 200

    result = wg.cli("status", check=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert lines[0].split() == STATUS_COLUMNS, result.stdout
    rows = {tuple(line.split()[:2]): line.split() for line in lines[1:]}
    assert set(rows) == {("private", "hello"), ("demo", "hello")}, result.stdout
    demo, private = rows[("demo", "hello")], rows[("private", "hello")]
    assert len(demo) == len(STATUS_COLUMNS), demo
    assert demo[2:5] == ["ready", "1/1", "1.2.3"]
    assert demo[5:7] == ["-", "1.2.3"], "no prefix: the tag is the version"
    assert demo[-1] == f"http://hello.demo.localhost:{wg.proxy_port}/"
    assert private[2:5] == ["sleeping", "0/0", "1.2.3"]
    assert private[-1] == f"http://hello.private.localhost:{wg.proxy_port}/"

    result = wg.cli("status", "--json", check=True)
    parsed = json.loads(result.stdout)
    by_key = {(r["environment"], r["service"]): r for r in parsed}
    assert set(by_key) == {("private", "hello"), ("demo", "hello")}
    row = by_key[("demo", "hello")]
    assert row["state"] == "ready"
    assert row["replicas"] == 1
    assert row["version"] == "1.2.3"
    assert row["url"] == f"http://hello.demo.localhost:{wg.proxy_port}/"
    assert any(name.startswith("idle") for name in row), row
    assert by_key[("private", "hello")]["state"] == "sleeping"
    assert by_key[("private", "hello")]["replicas"] == 0


@pytest.mark.parametrize("args", [("status",), ("status", "--json")])
def test_status_without_a_controller_says_it_cannot_reach_it(
    tmp_path: Path, args: tuple[str, ...],
) -> None:
    # A wakegate that was never started: its controller port has no listener.
    wg = Wakegate(tmp_path, {"services": {"hello": hello_service()}}, "not-running")
    result = wg.cli(*args)
    assert result.returncode != 0
    assert "cannot reach the controller" in result.stderr, result.stderr
    assert wg.controller in result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""


# --- up ---


async def test_up_prints_urls_and_each_new_key_once(wakegate: StartWakegate) -> None:
    wg = wakegate({
        "environments": {"private": {}, "demo": {}},
        "services": {"hello": hello_service(),
                     "greeter": hello_service(env={"SERVICE_NAME": "greeter"})},
    })
    out = "\n".join(wg.stdout)
    assert "URL" in out
    for env in ("private", "demo"):
        for svc in ("hello", "greeter"):
            assert f"http://{svc}.{env}.localhost:{wg.proxy_port}/" in out, out
    keys = wg.new_keys()
    assert set(keys) == {"private/hello", "private/greeter"}, out
    assert keys["private/hello"] != keys["private/greeter"]
    assert out.count("New API key for ") == 2
    for key in keys.values():
        assert out.count(key) == 1

    async with aiohttp.ClientSession() as http:
        status, _, _ = await get(http, wg, "greeter", "private",
                                 **{"X-API-Key": keys["private/greeter"]})
        assert status == 200

    assert wg.stop() == 0
    wg.start()  # same config, same state_dir
    out = "\n".join(wg.stdout)
    assert f"http://hello.private.localhost:{wg.proxy_port}/" in out
    assert wg.new_keys() == {}
    assert "New API key" not in out, out
    for key in keys.values():
        assert key not in out
    async with aiohttp.ClientSession() as http:
        for name, key in keys.items():
            status, _, _ = await get(http, wg, name.split("/")[1], "private",
                                     **{"X-API-Key": key})
            assert status == 200, f"the key of {name} no longer works after a restart"


def example_config() -> dict[str, Any]:
    config = yaml.safe_load(EXAMPLE_CONFIG.read_text())
    config.pop("listen", None)  # the harness picks free ports
    config.pop("state_dir", None)  # and a state_dir under tmp
    assert config["services"]["hello"]["command"] == "{python} hello/app.py"
    config["services"]["hello"]["command"] = f"{{python}} {HELLO}"
    return config


async def test_the_example_config_validates_and_runs(wakegate: StartWakegate) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "validate", "-c", "examples/wakegate.yaml"],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr

    wg = wakegate(example_config())
    key = wg.new_keys()["private/hello"]
    async with aiohttp.ClientSession() as http:
        answer = await get(http, wg, "hello", "demo")
        status, headers, body = answer.status, answer.headers, answer.text
        assert status == 200
        assert headers.get("X-Wakegate-Cold-Start") == "true"
        assert json.loads(body)["version"] == "1.0.0"

        status, _, headers = await get(http, wg, "hello", "private")
        assert status == 401
        assert headers["WWW-Authenticate"] == 'ApiKey realm="wakegate"'
        status, _, _ = await get(http, wg, "hello", "private", **{"X-API-Key": key})
        assert status == 200

        pids = set()
        for _ in range(6):
            answer = await get(http, wg, "hello", "production")
            status, body = answer.status, answer.text
            assert status == 200
            pids.add(json.loads(body)["pid"])
    assert len(pids) == 2, "production's two replicas should share the requests"
    assert wg.status()[("production", "hello")]["replicas"] == 2


async def test_production_answers_at_once_after_up(wakegate: StartWakegate) -> None:
    """Production never sleeps: once `up` says it is up, production is not woken by a request."""
    wg = wakegate(example_config())
    async with aiohttp.ClientSession() as http:
        status, _, headers = await get(http, wg, "hello", "production")
    assert status == 200
    assert "X-Wakegate-Cold-Start" not in headers, (
        "the first production request after `up` was held for a cold start"
    )


def test_up_with_an_invalid_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    wg = Wakegate(tmp_path, {
        "environments": {"demo": {"idle_timeout": "soon"}, "production": {}},
        "services": {"hello": hello_service(environments=["demo", "production"])},
    }, "invalid")
    result = run_up(wg)
    assert result.returncode == 2
    assert re.search(
        rf"^{re.escape(str(wg.config_path))}: environments\.demo\.idle_timeout: \S.*",
        result.stderr, re.MULTILINE,
    ), result.stderr
    assert "Traceback" not in result.stderr
    assert "wakegate is up" not in result.stdout
    assert wg.leftovers() == []
    assert refuses_connections(wg.proxy_port)
    assert refuses_connections(wg.controller_port)
    assert not (wg.state_dir / "logs").exists()


@pytest.mark.parametrize("taken", ["proxy", "controller"])
def test_up_on_a_taken_port_fails_cleanly(tmp_path: Path, taken: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        config = three_environments()
        config["listen"] = {taken: f"127.0.0.1:{port}"}
        wg = Wakegate(tmp_path, config, f"taken-{taken}")
        result = run_up(wg)
        assert result.returncode != 0
        assert f"127.0.0.1:{port}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr, result.stderr
        assert "wakegate is up" not in result.stdout
        wg.assert_no_leftovers(timeout=3.0)
    other = wg.controller_port if taken == "proxy" else wg.proxy_port
    assert refuses_connections(other), "the other listener was left open"


# --- logs ---


async def test_each_instance_logs_its_service_output(wakegate: StartWakegate) -> None:
    wg = wakegate({
        "environments": {"private": {}, "demo": {"hold_timeout": "10s"}},
        "services": {
            "hello": hello_service(version="4.5.6"),
            "broken": hello_service(environments=["demo"], env={"HELLO_EXIT_AT_START": "7"}),
        },
    })
    key = wg.new_keys()["private/hello"]
    async with aiohttp.ClientSession() as http:
        status, _, _ = await get(http, wg, "hello", "demo")
        assert status == 200
        status, _, _ = await get(http, wg, "hello", "private", **{"X-API-Key": key})
        assert status == 200
        status, _, _ = await get(http, wg, "broken", "demo")
        assert status == 503

    logs = wg.state_dir / "logs"
    # stdout of the service
    wait_until(lambda: "hello 4.5.6 listening on 127.0.0.1:" in wg.log_of("demo", "hello"), 5.0,
               "demo/hello's stdout in its log")
    wait_until(lambda: "hello 4.5.6 listening on 127.0.0.1:" in wg.log_of("private", "hello"),
               5.0, "private/hello's stdout in its log")
    # stderr of the service
    wait_until(lambda: "HELLO_EXIT_AT_START=7" in wg.log_of("demo", "broken"), 5.0,
               "demo/broken's stderr in its log")
    # one file per instance, each with its own output only
    assert "HELLO_EXIT_AT_START" not in wg.log_of("demo", "hello")
    assert sorted(p.name for p in logs.iterdir()) == [
        "demo.broken.log", "demo.hello.log", "private.hello.log"]
    # the one that failed to start is shown by status, with its log
    row = wg.status()[("demo", "broken")]
    assert row["state"] == "sleeping"


# --- metrics and health ---


async def test_metrics_names_labels_and_health(wakegate: StartWakegate) -> None:
    wg = wakegate({"environments": {"private": {}, "demo": {}},
                   "services": {"hello": hello_service()}})
    key = wg.new_keys()["private/hello"]
    wrong_key = "wg_" + "x" * 40
    secret_path = "/a-secret-path-7f3a"
    async with aiohttp.ClientSession() as http:
        status, _, headers = await get(http, wg, "hello", "demo", path=secret_path)
        assert (status, headers.get("X-Wakegate-Cold-Start")) == (200, "true")
        status, _, _ = await get(http, wg, "hello", "private", path=secret_path)
        assert status == 401
        status, _, _ = await get(http, wg, "hello", "private", path=secret_path,
                                 **{"X-API-Key": wrong_key})
        assert status == 401
        status, _, _ = await get(http, wg, "hello", "private", path=secret_path,
                                 **{"Authorization": f"Bearer {key}"})
        assert status == 200
        async with http.get(wg.base + secret_path,
                            headers={"Host": "intruder.example.localhost"}) as r:
            assert r.status == 404

        for base in (wg.base, wg.controller):
            for path in ("/healthz", "/readyz"):
                async with http.get(base + path) as r:
                    assert r.status == 200, f"{base}{path}"

    proxy_text = wg.metrics_text(wg.base)
    controller_text = wg.metrics_text(wg.controller)
    for text, names in ((proxy_text, PROXY_METRICS), (controller_text, CONTROLLER_METRICS)):
        found = {name for name, labels, _ in samples(text)
                 if labels.get("environment") in ("demo", "private")
                 and labels.get("service") == "hello"}
        for name in names:
            variants = {name, f"{name}_bucket", f"{name}_count", f"{name}_sum"}
            assert found & variants, f"{name} has no sample for hello:\n{text}"

    # Values a user would check after one cold start, two 401s and a few requests.
    assert wg.metric("wakegate_cold_starts_total", environment="demo", service="hello",
                     result="success") == 1.0
    assert wg.metric("wakegate_requests_total", environment="demo", service="hello",
                     code="200") == 1.0
    assert wg.metric("wakegate_requests_total", environment="private", service="hello",
                     code="401") == 2.0
    auth = [(labels["reason"], value) for name, labels, value in samples(proxy_text)
            if name == "wakegate_auth_failures_total" and labels["environment"] == "private"]
    assert sum(value for _, value in auth) == 2.0, auth
    assert wg.metric("wakegate_instance_replicas", environment="demo", service="hello") == 1.0
    assert wg.metric("wakegate_scale_events_total", environment="demo", service="hello",
                     direction="up") == 1.0

    # Labels never carry a host, a path, a key or an address.
    for text in (proxy_text, controller_text):
        for forbidden in (key, wrong_key, secret_path, "intruder", "localhost", "127.0.0.1"):
            assert forbidden not in text, f"{forbidden!r} appears in /metrics"
        for name, labels, _ in samples(text):
            if name.startswith("wakegate_"):
                assert set(labels) <= ALLOWED_LABELS, (name, labels)

