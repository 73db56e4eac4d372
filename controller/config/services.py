"""The services section: each name and its settings into a `spec.Service`.

A service names the environments it is placed in; they are checked against
every environment the file defines, valid or not, so that one bad
environment setting does not also make each service in it look wrong.
A service's `autoscale:` override is checked with each valid environment it
is placed in (config.autoscale). Its `depends_on:` names services of the same
file; once every service is read, the dependencies of the valid ones are
checked as a whole: no cycle, and each dependency placed wherever its
dependent is (they wake together in one environment).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

from controller import spec
from controller.config.autoscale import check_override, read_override
from controller.config.environments import DEFAULT_SERVICE_ENVIRONMENTS
from controller.config.fields import NameRule, duration, named_entries, section, take, take_list
from controller.config.report import Report, describe, join, suggest
from controller.config.values import (
    parse_command,
    parse_http_path,
    parse_ignore_path,
    parse_user_agent,
    parse_version,
)
from controller.names import is_service_name
from controller.units import show

__all__ = ["read_services"]

SERVICE_KEYS = (
    "command", "version", "environments", "readiness", "env", "start_timeout", "stop_grace",
    "activity", "autoscale", "depends_on",
)
READINESS_KEYS = ("http", "tcp", "timeout")
ACTIVITY_KEYS = ("ignore_paths", "ignore_user_agents")
DEFAULT_VERSION = "0.0.0"

_SERVICE_NAME = NameRule(
    "service",
    is_service_name,
    "is not a DNS label: use 1 to 63 lowercase letters, digits and dashes, starting and "
    "ending with a letter or digit",
)
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_READINESS_DEFAULTS = spec.Readiness()
_SERVICE_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(spec.Service)
    if f.default is not dataclasses.MISSING
}


def read_services(
    report: Report,
    value: object,
    defined: list[str],
    environments: Mapping[str, spec.Environment],
) -> dict[str, spec.Service]:
    """The valid services; `defined`: every environment name the file defines (valid or not);
    `environments`: the valid ones, which a service's settings are checked with."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        report.add(
            "services", f"must be a mapping of service name to settings, got {describe(value)}"
        )
        return {}
    read_service = functools.partial(
        _service, defined=defined, valid_environments=environments,
        defined_services=[name for name in value if isinstance(name, str)],
    )
    services = named_entries(report, "services", value, _SERVICE_NAME, read_service)
    _check_dependency_environments(report, services)
    _check_dependency_cycles(report, services)
    return services


def _service(
    report: Report,
    path: str,
    name: object,
    settings: object,
    defined: list[str],
    valid_environments: Mapping[str, spec.Environment],
    defined_services: list[str],
) -> spec.Service | None:
    raw = section(report, path, settings, SERVICE_KEYS)
    if raw is None:
        return None
    before = len(report)
    if "command" not in raw:
        report.add(
            join(path, "command"),
            "is required: the command that starts one replica, "
            'e.g. "{python} app.py --port {port}"',
        )
    d = _SERVICE_DEFAULTS
    command = take(report, raw, path, "command", parse_command, "")
    version = take(report, raw, path, "version", parse_version, DEFAULT_VERSION)
    environments = _service_environments(
        report, join(path, "environments"), raw.get("environments"), defined
    )
    readiness = _readiness(report, join(path, "readiness"), raw.get("readiness"))
    env = _env_vars(report, join(path, "env"), raw.get("env"))
    start_timeout = take(
        report, raw, path, "start_timeout", duration(positive=True), d["start_timeout"]
    )
    stop_grace = take(report, raw, path, "stop_grace", duration(positive=False), d["stop_grace"])
    ignore_paths, ignore_user_agents = _activity(
        report, join(path, "activity"), raw.get("activity")
    )
    autoscale_path, autoscale_before = join(path, "autoscale"), len(report)
    autoscale_overrides = read_override(report, autoscale_path, raw.get("autoscale"))
    if len(report) == autoscale_before:  # a bad key would make the combination look wrong too
        placed = [valid_environments[e] for e in environments if e in valid_environments]
        check_override(report, autoscale_path, autoscale_overrides, placed)
    depends_on = _depends_on(
        report, join(path, "depends_on"), raw.get("depends_on"), name, defined_services
    )
    if len(report) > before:
        return None
    return spec.Service(
        name=str(name),
        command=command,
        version=version,
        environments=environments,
        readiness=readiness,
        env=env,
        ignore_paths=ignore_paths,
        ignore_user_agents=ignore_user_agents,
        start_timeout=start_timeout,
        stop_grace=stop_grace,
        autoscale_overrides=autoscale_overrides,
        depends_on=depends_on,
    )


def _service_environments(
    report: Report, path: str, value: object, defined: list[str]
) -> tuple[str, ...]:
    explicit = value not in (None, [])
    if not explicit:
        names: list[Any] = list(DEFAULT_SERVICE_ENVIRONMENTS)
    elif isinstance(value, list):
        names = value
    else:
        report.add(
            path,
            f"must be a list of environment names, e.g. [private, demo], got {describe(value)}",
        )
        return ()
    result: list[str] = []
    for index, name in enumerate(names):
        item = f"{path}[{index}]" if explicit else path
        problem = _placement_problem(name, result, defined)
        if problem is None:
            result.append(name)
        elif explicit:
            report.add(item, problem)
        else:
            report.add(item, f"defaults to [private, demo], but {problem}; list the environments")
    return tuple(result)


def _placement_problem(name: object, placed: list[str], defined: list[str]) -> str | None:
    if not isinstance(name, str):
        return f"must be an environment name, got {describe(name)}"
    if name in placed:
        return f"environment {show(name)} is listed twice; list each environment once"
    if name not in defined:
        known = ", ".join(defined) if defined else "none"
        return (
            f"environment {show(name)} is not defined{suggest(name, defined)}; "
            f"defined environments: {known}"
        )
    return None


def _depends_on(
    report: Report, path: str, value: object, name: object, defined: list[str]
) -> tuple[str, ...]:
    listed: list[str] = []

    def parse(item: object) -> str:
        problem = _dependency_problem(item, name, listed, defined)
        if problem is not None:
            raise ValueError(problem)
        listed.append(str(item))
        return str(item)

    return take_list(report, path, value, parse)


def _dependency_problem(
    item: object, name: object, listed: list[str], defined: list[str]
) -> str | None:
    if not isinstance(item, str):
        return f"must be a service name, got {describe(item)}"
    if item == name:
        return f"{show(item)} is this service itself; a service cannot depend on itself"
    if item in listed:
        return f"service {show(item)} is listed twice; list each service once"
    if item not in defined:
        others = [d for d in defined if d != name]
        return (
            f"service {show(item)} is not defined{suggest(item, others)}; "
            f"defined services: {', '.join(others) if others else 'none'}"
        )
    return None


def _check_dependency_environments(report: Report, services: Mapping[str, spec.Service]) -> None:
    """A dependency must be placed in every environment its dependent is: it wakes there."""
    for name, service in services.items():
        for index, dependency in enumerate(service.depends_on):
            placed = services.get(dependency)
            if placed is None:
                continue  # not valid: its own problems are reported
            missing = [e for e in service.environments if e not in placed.environments]
            if missing:
                where = ", ".join(show(e) for e in missing)
                report.add(
                    f"{join(join('services', name), 'depends_on')}[{index}]",
                    f"service {show(dependency)} is not in environment{_plural(missing)} "
                    f"{where}, where {show(name)} is: a service and its dependencies must be "
                    f"in the same environments; add {', '.join(missing)} to "
                    f"{join(join('services', dependency), 'environments')}",
                )


def _check_dependency_cycles(report: Report, services: Mapping[str, spec.Service]) -> None:
    """Every cycle of depends_on once, at its first service in file order: "a -> b -> a"."""
    order = {name: index for index, name in enumerate(services)}
    done: set[str] = set()
    seen_cycles: set[tuple[str, ...]] = set()

    def visit(name: str, stack: list[str]) -> None:
        stack.append(name)
        for dependency in services[name].depends_on:
            if dependency not in services or dependency in done:
                continue
            if dependency in stack:
                cycle = stack[stack.index(dependency):]
                first = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                cycle = cycle[first:] + cycle[:first]
                if tuple(cycle) not in seen_cycles:
                    seen_cycles.add(tuple(cycle))
                    report.add(
                        join(join("services", cycle[0]), "depends_on"),
                        f"{' -> '.join([*cycle, cycle[0]])} is a cycle: services that wake "
                        "together cannot depend on each other in a circle; remove one of "
                        "these dependencies",
                    )
            else:
                visit(dependency, stack)
        stack.pop()
        done.add(name)

    for name in services:
        if name not in done:
            visit(name, [])


def _plural(items: list[str]) -> str:
    return "s" if len(items) > 1 else ""


def _readiness(report: Report, path: str, value: object) -> spec.Readiness:
    d = _READINESS_DEFAULTS
    raw = section(report, path, value, READINESS_KEYS)
    if raw is None:
        return d
    timeout = take(report, raw, path, "timeout", duration(positive=True), d.timeout)
    if "http" in raw and "tcp" in raw:
        report.add(
            path, "has both http and tcp; choose exactly one: {http: /healthz} or {tcp: true}"
        )
        return d
    if "tcp" in raw:
        if raw["tcp"] is not True:
            report.add(
                join(path, "tcp"),
                f"must be true (probe by TCP connect), got {describe(raw['tcp'])}; "
                "to probe by HTTP write http: /path instead",
            )
        return spec.Readiness(http_path=None, tcp=True, timeout=timeout)
    http_path = take(report, raw, path, "http", parse_http_path, d.http_path)
    return spec.Readiness(http_path=http_path, tcp=False, timeout=timeout)


def _env_vars(report: Report, path: str, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        report.add(path, f"must be a mapping of variable name to value, got {describe(value)}")
        return ()
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        item_path = join(path, key)
        if not isinstance(key, str) or not _ENV_VAR.fullmatch(key):
            report.add(
                item_path,
                f"{show(key)} is not a valid environment variable name: use letters, digits "
                "and underscores, not starting with a digit",
            )
        elif isinstance(item, str | int | float):  # bool is an int: "True"/"False"
            pairs.append((key, str(item)))
        else:
            report.add(item_path, f"must be a string, got {describe(item)}")
    return tuple(pairs)


def _activity(report: Report, path: str, value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    raw = section(report, path, value, ACTIVITY_KEYS)
    if raw is None:
        return (), ()
    paths = take_list(report, join(path, "ignore_paths"), raw.get("ignore_paths"),
                      parse_ignore_path)
    agents = take_list(
        report, join(path, "ignore_user_agents"), raw.get("ignore_user_agents"), parse_user_agent
    )
    return paths, agents
