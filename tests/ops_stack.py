"""Helpers for the operator-facing end-to-end tests: wakegate in split mode, shared by a
module, behind real third-party programs (nginx, Prometheus) run as children.

Every child carries the run's marker in its environment (as wakegate's processes
do), is stopped by its pid (SIGTERM, then SIGKILL) even when a test fails, and is
checked to be gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.tools import stop as stop_by_pid

from .conftest import Controller, Split, process_env, stop_all, wait_until
from .procs import processes_with, stat

REPO = Path(__file__).resolve().parent.parent
MONITORING = REPO / "manifests" / "monitoring"
RULES_FILE = MONITORING / "wakegate-rules.yaml"
RULES_TESTS = MONITORING / "wakegate-rules.test.yaml"
PROMETHEUS_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"


def program(path: str, package: str) -> str:
    """The absolute path of an external program, or skip the test saying how to get it."""
    found = path if os.access(path, os.X_OK) else shutil.which(os.path.basename(path))
    if not found:
        pytest.skip(f"{path} is not installed (Debian package `{package}`: "
                    f"`apt-get install {package}`, as .ci/run does)")
    return found


@contextlib.contextmanager
def running_split(tmp: Path, config: dict[str, Any], proxies: int = 2,
                  report_interval: str = "100ms") -> Iterator[Split]:
    """One `wakegate controller` and `proxies` `wakegate proxy` processes, as the `split`
    fixture starts them, for a whole module; all stopped by pid at the end."""
    controller = Controller(tmp, config, "controller")
    deployment = Split(tmp, controller, report_interval, None)
    try:
        controller.start()
        deployment.keys = controller.new_keys()
        for _ in range(proxies):
            deployment.add_proxy(wait=False)
        for proxy in deployment.proxies:
            proxy.wait_up()
        yield deployment
    finally:
        stop_all([*deployment.proxies, controller])


class Child:
    """A third-party program run in the foreground as a child of the test."""

    def __init__(self, name: str, argv: list[str], directory: Path) -> None:
        self.name = name
        self.argv = argv
        self.dir = directory
        self.marker = uuid.uuid4().hex
        self.log_path = directory / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Child:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=self.dir, env=process_env(self.marker, None),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            code = None if self.proc is None else self.proc.returncode
            raise AssertionError(f"{self.name} exited ({code}):\n{self.log()[-3000:]}")
        return True

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        """Until `predicate` holds; fails at once (with the log) if the child exits."""
        return wait_until(lambda: self.alive() and predicate(), timeout,
                          f"{what} (log: {self.log_path})")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL; its children (nginx's workers) are killed if they stay.

        (nginx writes its process titles over its environment, so its processes
        are found by parentage, not by the marker.)
        """
        proc, self.proc = self.proc, None
        family = descendants(proc.pid) if proc is not None and proc.poll() is None else {}
        try:
            stop_by_pid(proc, timeout)
        finally:
            def left() -> list[int]:
                return [pid for pid, started in family.items() if start_time(pid) == started]

            try:
                wait_until(lambda: not left(), 5.0, f"the children of {self.name} to exit")
            except AssertionError:
                for pid in left():
                    os.kill(pid, signal.SIGKILL)
                raise
            finally:
                for pid in processes_with("WAKEGATE_TEST_INSTANCE", self.marker):
                    os.kill(pid, signal.SIGKILL)


def start_time(pid: int) -> int | None:
    """When a live (not zombie) process started, in clock ticks: tells a pid's reuse apart."""
    fields = stat(pid)
    return None if fields is None or fields[0] == b"Z" else int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """{pid: start time} of the live processes below `root`."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := stat(int(entry))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: dict[int, int] = {}
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        started = start_time(pid)
        if started is not None:
            found[pid] = started
        todo.extend(children.get(pid, []))
    return found


@contextlib.contextmanager
def running(child: Child) -> Iterator[Child]:
    try:
        yield child.start()
    finally:
        child.stop()


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on host:port."""
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def sample_names(exposition: str) -> set[str]:
    """The names of the samples in a Prometheus text exposition (with _bucket, _total...)."""
    names = set()
    for line in exposition.splitlines():
        if line and not line.startswith("#"):
            names.add(line.split("{", 1)[0].split(" ", 1)[0])
    return names


def prometheus_query(base: str, expr: str) -> list[dict[str, Any]]:
    """The result vector of an instant query through Prometheus' HTTP API."""
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        body = get_json(url)
    except urllib.error.HTTPError as exc:
        raise AssertionError(f"Prometheus refused {expr!r}: {exc.read()[:500]!r}") from None
    assert body["status"] == "success", body
    result = body["data"]["result"]
    if body["data"]["resultType"] == "scalar":
        return [{"metric": {}, "value": result}]
    return list(result)


# --- PromQL in the rules and the dashboard -------------------------------------------

_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on",
                       "ignoring", "group_left", "group_right", "inf", "nan", "atan2"})
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
                     "$environment": ".*", "$service": ".*"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)      # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)     # ranges and subqueries
    text = _GROUPING.sub(" ", text)
    return {m.group(1) for m in _IDENTIFIER.finditer(text)
            if not m.group(2) and m.group(1).lower() not in _KEYWORDS}


def rule_exprs() -> list[tuple[str, str]]:
    """(alert or record name, expr) of every rule in the plain rules file."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    return [(rule.get("alert") or rule["record"], rule["expr"])
            for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and template variable of the dashboard,
    `label_values(...)` reduced to its selector."""
    dashboard = json.loads(DASHBOARD.read_text())
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            match = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: {query}"
            found.append((f"variable {variable['name']}", match.group(1)))
    return found


def with_grafana_variables(expr: str) -> str:
    """A dashboard query as Prometheus runs it once Grafana has filled in its variables."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr
