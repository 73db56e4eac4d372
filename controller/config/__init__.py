"""Read a wakegate.yaml file and validate it into a frozen `spec.Config`.

`load_config(path)` either returns a complete, valid `spec.Config` or raises
`ConfigError`, whose `problems` list holds every problem found in one pass,
each formatted as ``<file>: <path.to.field>: <problem>`` (problems about the
file as a whole, such as a YAML syntax error, read ``<file>: line 3, column 5:
<problem>``). It never lets any other exception escape, so the CLI can print
the problems and exit 2.

The file format (every key is optional unless marked required)::

    domain: localhost        # hosts are {service}.{environment}.{domain}; a DNS name
    state_dir: .wakegate     # relative to the config file's directory
    runtime: local           # local | kubernetes
    listen:
      proxy: 127.0.0.1:8080       # "host:port" or "[v6]:port"
      controller: 127.0.0.1:8081
    controller:              # who may call the controller API besides the token holders' CLI
      hostnames: [wakegate-controller.wakegate-system.svc]  # Host names it answers to, besides
                                                            # IP addresses and localhost
      allowed_origins: []    # web origins whose pages may call it (none by default)
    proxy:                   # defaults: spec.ProxySettings
      connect_timeout: 5s
      read_timeout: 60s
      max_body_size: 64MiB   # bytes, or 512, 10KB (1000), 10KiB (1024), MB/MiB, GB/GiB
      max_header_size: 8KiB
      trusted_proxies: [127.0.0.1/32, "::1"]   # IPs or CIDRs
      header_timeout: 60s    # a client's request head not whole by then: 408 and closed
      keepalive_timeout: 75s # an idle keep-alive client connection is closed after this
    environments:            # name -> settings, in file order; null means {}
      private: {}            # kind defaults to the name when the name is a kind
      demo: {idle_timeout: 30s}
      qa: {kind: development, access: api_key, prefix: qa}   # prefix: see below
      production:
        max_replicas: 4
        autoscale: {target_concurrency: 50, window: 30s}   # by load, min..max; see below
    services:
      hello:
        command: "{python} app.py --port {port}"   # required; also {version}
        version: "1.0.0"                           # a string; default "0.0.0"
        environments: [private, demo]              # default (missing or []): [private, demo]
        readiness: {http: /healthz, timeout: 1s}   # or {tcp: true}; default {http: /}
        env: {GREETING: hi}
        start_timeout: 120s
        stop_grace: 10s
        activity:
          ignore_paths: [/healthz, /metrics*]      # a trailing * matches a prefix
          ignore_user_agents: [kube-probe, Prometheus]
        autoscale: {target_concurrency: 20}        # over each environment's autoscale keys
        depends_on: [db]                           # woken with it, awake while it is
    max_ephemeral_environments: 20   # made by `wakegate env create`, never listed here
    ephemeral: {idle_timeout: 15m, ttl: 24h, max_ttl: 30d}   # defaults: spec.EphemeralSettings

Environment settings: ``kind`` (one of spec.KINDS but ephemeral; required
when the name is not itself a kind), ``access`` (public | api_key), ``idle_timeout`` (a
duration, or ``never``/null: never sleeps), ``min_replicas`` and
``max_replicas`` (integers >= 0, min <= max), ``hold_timeout`` (duration > 0),
``hold_queue_size`` (integer >= 1), ``scale_down_delay`` (duration >= 0: how
long the old colour runs after a promote; not autoscale's),
``wake_strategy`` (``hold`` or ``page``), ``crash_backoff`` (``{after: 3,
first: 1s, max: 5m}``: failed activations in a row before the back-off, and
its first and longest delay; see spec.CrashBackoff) and ``autoscale``
(``{target_concurrency: 100, target_utilization: 0.7, window: 60s,
panic_window: 6s, panic_threshold: 2.0, scale_down_delay: 30s}``: see
spec.Autoscale and controller.autoscale_bounds; target_concurrency > 0, 0 <
target_utilization <= 1, window > 0, 0 < panic_window <= window, 1.1 <=
panic_threshold <= 10, scale_down_delay >= 0). A service's ``autoscale``
takes the same keys and sets them over each environment it is placed in,
checked combined with each. Private and demo never scale by load:
``max_replicas`` above 1 is a problem there. ``prefix`` (1 to 8 lowercase
letters and digits; "" or null: none) defaults by kind
(spec.DEFAULT_PREFIXES). The ``ephemeral`` kind is not for the file: those
environments are made by ``wakegate env create``. A service's ``depends_on``
lists services of the file (not itself, no cycle), each placed in every
environment the service is.
Unset keys take ``spec.KIND_DEFAULTS[kind]``, ``spec.DEFAULT_HOLD_TIMEOUT``,
``spec.DEFAULT_HOLD_QUEUE_SIZE``, ``spec.DEFAULT_SCALE_DOWN_DELAY``,
``spec.CrashBackoff()`` and ``spec.Autoscale()``. When the
``environments`` key is missing altogether (or null), the file defines
``private`` and ``demo`` with their kind defaults, which is where services go
by default.

Durations are a number of seconds (int or float >= 0) or a string
``<number><unit>`` with unit ms, s, m or h ("150ms", "1.5s", "15m", "1h").

Names (the rules live in controller.names): environments match
``^[A-Za-z][A-Za-z0-9-]{0,23}$``; services are lowercase RFC 1123 DNS labels.
Host names ignore case, so two environments whose names differ only by case
may not share a service.

The package, from the bottom up: ``report`` (the problems found and the words
they are written in), ``reader`` (bytes to YAML data), ``fields`` (the generic
readers: a section's keys, a field with its default, a list, an integer, a
duration), ``values`` (the parsers of specific values: addresses, origins,
commands, versions), ``autoscale`` (the autoscale block of environments
and services), ``settings``, ``environments``, ``services`` and
``ephemeral`` (one section each), ``schema`` (the file as a whole) and this
module, the entry point.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from controller import spec
from controller.config.reader import UNREADABLE, read_yaml
from controller.config.report import Report
from controller.config.schema import build_config, top_level_problem
from controller.config.values import parse_version
from controller.units import parse_duration, parse_size

__all__ = ["ConfigError", "load_config", "parse_duration", "parse_size", "parse_version"]


class ConfigError(Exception):
    """A config file that cannot be used; `problems` lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


def load_config(path: str | os.PathLike[str], raw: bytes | None = None) -> spec.Config:
    """Read and validate the config file at `path`; raise ConfigError listing every problem.

    `raw`: the file's bytes, when the caller has read them already (so that
    what was checked is what is loaded).
    """
    file = os.fspath(path)
    report = Report(file)
    data = read_yaml(report, file, raw)
    if data is UNREADABLE:
        raise ConfigError(report.problems)
    if not isinstance(data, dict):
        report.note(top_level_problem(data))
        raise ConfigError(report.problems)
    config = build_config(report, file, data)
    if report.problems:
        raise ConfigError(report.problems)
    return dataclasses.replace(config, warnings=tuple(report.warnings))
