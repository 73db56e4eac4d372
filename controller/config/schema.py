"""The file as a whole: its top-level keys, each section read in file-format order, one `Config`.

The sections are read in a fixed order, so the problems of a file always come
in the same order; the last check needs them all: two instances may not end
up with the same host.
"""

from __future__ import annotations

import os
from types import MappingProxyType
from typing import Any

from controller import spec
from controller.config.environments import read_environments
from controller.config.ephemeral import read_ephemeral
from controller.config.fields import check_keys, one_of, take
from controller.config.report import Report, describe, join
from controller.config.services import read_services
from controller.config.settings import (
    read_controller,
    read_kubernetes,
    read_listen,
    read_proxy,
)
from controller.config.values import parse_domain, state_dir_parser
from controller.names import MAX_HOST_LENGTH
from controller.units import show

__all__ = ["build_config", "top_level_problem"]

TOP_KEYS = (
    "domain", "state_dir", "runtime", "listen", "proxy", "controller", "kubernetes",
    "environments", "services", "max_ephemeral_environments", "ephemeral",
)
RUNTIMES = ("local", "kubernetes")
DEFAULT_DOMAIN = "localhost"
DEFAULT_STATE_DIR = ".wakegate"
DEFAULT_RUNTIME = "local"


def top_level_problem(data: object) -> str:
    """What is wrong with a document that is not a mapping of settings."""
    if data is None:
        return "the file is empty; it needs a mapping with keys such as environments and services"
    return (
        f"the top level must be a mapping of settings ({', '.join(TOP_KEYS)}), "
        f"got {describe(data)}"
    )


def build_config(report: Report, file: str, data: dict[Any, Any]) -> spec.Config:
    """The Config for `data`; meaningful only if no problem was reported."""
    check_keys(report, "", data, TOP_KEYS)
    base_dir = os.path.dirname(os.path.abspath(file))
    domain = take(report, data, "", "domain", parse_domain, DEFAULT_DOMAIN)
    state_dir = take(
        report,
        data,
        "",
        "state_dir",
        state_dir_parser(base_dir),
        os.path.join(base_dir, DEFAULT_STATE_DIR),
    )
    runtime = take(report, data, "", "runtime", one_of(RUNTIMES), DEFAULT_RUNTIME)
    proxy_address, controller_address = read_listen(report, data.get("listen"))
    proxy = read_proxy(report, data.get("proxy"), proxy_address)
    controller = read_controller(report, data.get("controller"), controller_address)
    kubernetes = read_kubernetes(report, data.get("kubernetes"), base_dir)
    environments, defined = read_environments(report, data.get("environments"))
    services = read_services(report, data.get("services"), defined, environments)
    _check_hosts(report, domain, environments, services)
    ephemeral = read_ephemeral(report, data)
    return spec.Config(
        path=file,
        domain=domain,
        state_dir=state_dir,
        base_dir=base_dir,
        runtime=runtime,
        proxy=proxy,
        controller=controller,
        environments=MappingProxyType(environments),
        services=MappingProxyType(services),
        kubernetes=kubernetes,
        ephemeral=ephemeral,
    )


def _check_hosts(
    report: Report,
    domain: str,
    environments: dict[str, spec.Environment],
    services: dict[str, spec.Service],
) -> None:
    """Report instances whose host names collide (names differing only by case)."""
    owners: dict[str, str] = {}
    for environment in environments:
        for service in services.values():
            if environment not in service.environments:
                continue
            host = spec.instance_host(service.name, environment, domain)
            instance = f"{environment}/{service.name}"
            path = join("environments", environment)
            if host in owners:
                report.add(
                    path,
                    f"the host {show(host)} of {instance} is also the host of "
                    f"{owners[host]} (host names ignore case); rename one of the environments",
                )
            elif len(host) > MAX_HOST_LENGTH:
                report.add(
                    path,
                    f"the host of {instance} is longer than {MAX_HOST_LENGTH} characters; "
                    "use a shorter name or domain",
                )
            else:
                owners[host] = instance
