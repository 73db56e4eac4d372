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
      qa: {kind: development, access: api_key}
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

Environment settings: ``kind`` (one of spec.KINDS; required when the name is
not itself a kind), ``access`` (public | api_key), ``idle_timeout`` (a
duration, or ``never``/null: never sleeps), ``min_replicas`` and
``max_replicas`` (integers >= 0, min <= max), ``hold_timeout`` (duration > 0),
``hold_queue_size`` (integer >= 1), ``scale_down_delay`` (duration >= 0),
``wake_strategy`` (``hold`` or ``page``) and ``crash_backoff`` (``{after: 3,
first: 1s, max: 5m}``: failed activations in a row before the back-off, and
its first and longest delay; see spec.CrashBackoff).
Unset keys take ``spec.KIND_DEFAULTS[kind]``, ``spec.DEFAULT_HOLD_TIMEOUT``,
``spec.DEFAULT_HOLD_QUEUE_SIZE``, ``spec.DEFAULT_SCALE_DOWN_DELAY`` and
``spec.CrashBackoff()``. When the
``environments`` key is missing altogether (or null), the file defines
``private`` and ``demo`` with their kind defaults, which is where services go
by default.

Durations are a number of seconds (int or float >= 0) or a string
``<number><unit>`` with unit ms, s, m or h ("150ms", "1.5s", "15m", "1h").

Names: environments match ``^[A-Za-z][A-Za-z0-9-]{0,23}$``; services are
lowercase RFC 1123 DNS labels. Host names ignore case, so two environments
whose names differ only by case may not share a service.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
import shlex
import string
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

import yaml

from controller import spec
from controller.units import is_number as _is_number
from controller.units import parse_duration, parse_size
from controller.units import show as _show

__all__ = ["ConfigError", "load_config", "parse_duration", "parse_size", "parse_version"]

T = TypeVar("T")

TOP_KEYS = (
    "domain", "state_dir", "runtime", "listen", "proxy", "controller", "kubernetes",
    "environments", "services",
)
CONTROLLER_KEYS = ("hostnames", "allowed_origins")
# Keys that older versions took: still accepted, ignored, with a warning saying why.
OBSOLETE_PROXY_KEYS = {
    "retry_window": "no longer used and ignored: a refused connect now takes that endpoint out "
    "and holds the request until a replica accepts (within hold_timeout); remove it",
}
KUBERNETES_KEYS = (
    "kubeconfig",
    "lease_namespace",
    "lease_name",
    "lease_duration",
    "renew_deadline",
    "retry_period",
    "activity_persist_interval",
)
LISTEN_KEYS = ("proxy", "controller")
PROXY_KEYS = (
    "connect_timeout",
    "read_timeout",
    "max_body_size",
    "max_header_size",
    "trusted_proxies",
    "header_timeout",
    "keepalive_timeout",
)
ENVIRONMENT_KEYS = (
    "kind",
    "access",
    "idle_timeout",
    "min_replicas",
    "max_replicas",
    "hold_timeout",
    "hold_queue_size",
    "scale_down_delay",
    "wake_strategy",
    "crash_backoff",
)
CRASH_BACKOFF_KEYS = ("after", "first", "max")
SERVICE_KEYS = (
    "command",
    "version",
    "environments",
    "readiness",
    "env",
    "start_timeout",
    "stop_grace",
    "activity",
)
READINESS_KEYS = ("http", "tcp", "timeout")
ACTIVITY_KEYS = ("ignore_paths", "ignore_user_agents")

RUNTIMES = ("local", "kubernetes")
ACCESS_MODES = ("public", "api_key")
PLACEHOLDERS = ("port", "version", "python")
DEFAULT_DOMAIN = "localhost"
DEFAULT_STATE_DIR = ".wakegate"
DEFAULT_RUNTIME = "local"
DEFAULT_VERSION = "0.0.0"
DEFAULT_SERVICE_ENVIRONMENTS = ("private", "demo")
NEVER = "never"
MAX_HOST_LENGTH = 253

_ENVIRONMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,23}")
_SERVICE_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DNS_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PORT = re.compile(r"[0-9]{1,5}")
# Defaults come from spec.py so that there is one place to change them.
_PROXY_DEFAULTS = spec.ProxySettings()
_CONTROLLER_DEFAULTS = spec.ControllerSettings()
_READINESS_DEFAULTS = spec.Readiness()
_SERVICE_DEFAULTS = {
    f.name: f.default
    for f in dataclasses.fields(spec.Service)
    if f.default is not dataclasses.MISSING
}

_ADDRESS_HINT = 'use "host:port" (e.g. "127.0.0.1:8080") or "[v6]:port" (e.g. "[::1]:8080")'


class ConfigError(Exception):
    """A config file that cannot be used; `problems` lists every problem found."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


# --- public helpers -----------------------------------------------------------------


def load_config(path: str | os.PathLike[str], raw: bytes | None = None) -> spec.Config:
    """Read and validate the config file at `path`; raise ConfigError listing every problem.

    `raw`: the file's bytes, when the caller has read them already (so that
    what was checked is what is loaded).
    """
    file = os.fspath(path)
    report = _Report(file)
    text = _read_text(report, file, raw)
    if text is None:
        raise ConfigError(report.problems)
    data = _parse_yaml(report, text)
    if data is _UNPARSED:
        raise ConfigError(report.problems)
    if not isinstance(data, dict):
        report.note(_top_level_problem(data))
        raise ConfigError(report.problems)
    config = _build_config(report, file, data)
    if report.problems:
        raise ConfigError(report.problems)
    return dataclasses.replace(config, warnings=tuple(report.warnings))


# --- collecting problems ------------------------------------------------------------


class _Report:
    """Problems found so far, already formatted with the file name."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []
        self.warnings: list[str] = []  # valid, but probably not what was meant

    def add(self, path: str, problem: str) -> None:
        self.problems.append(f"{self.file}: {path or '(top level)'}: {problem}")

    def warn(self, path: str, warning: str) -> None:
        self.warnings.append(f"{self.file}: {path}: warning: {warning}")

    def note(self, problem: str) -> None:
        """A problem about the file as a whole (unreadable, not YAML, ...)."""
        self.problems.append(f"{self.file}: {problem}")

    def __len__(self) -> int:
        return len(self.problems)


def _join(path: str, key: object) -> str:
    text = key if isinstance(key, str) else _show(key)
    return f"{path}.{text}" if path else text


def _type_name(value: object) -> str:
    """The YAML word for a value's type, as a person wrote it in the file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "mapping"
    return type(value).__name__  # e.g. a date: YAML reads 2024-01-01 as one


def _describe(value: object) -> str:
    if value is None or isinstance(value, dict | list):
        return _type_name(value)
    return f"{_type_name(value)} {_show(value)}"


def _suggest(word: str, options: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f' (did you mean "{close[0]}"?)' if close else ""


# --- reading the file ---------------------------------------------------------------


_UNPARSED = object()  # marks "the YAML could not be parsed", as opposed to an empty document


class _Loader(yaml.SafeLoader):
    """SafeLoader that reports duplicate mapping keys instead of keeping the last one."""

    def __init__(self, stream: str, report: _Report) -> None:
        super().__init__(stream)
        self._report = report

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # `<<` merges are meant to be overridden by the mapping's own keys.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    self._report.note(
                        f"line {line}: duplicate key {_show(key)} (first at line "
                        f"{first_line[key]}); YAML would keep only the last one, so remove "
                        "or rename one of them"
                    )
                else:
                    first_line[key] = line
            except TypeError:  # unhashable key: SafeLoader itself reports it with a line
                continue


def _read_text(report: _Report, file: str, raw: bytes | None = None) -> str | None:
    if raw is None:
        try:
            with open(file, "rb") as stream:
                raw = stream.read()
        except OSError as exc:
            report.note(f"cannot read the file: {exc.strerror or exc}")
            return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.note(f"byte {exc.start}: the file is not UTF-8 text; save it as UTF-8")
        return None


def _parse_yaml(report: _Report, text: str) -> object:
    loader = _Loader(text, report)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        report.note(_yaml_problem(exc))
    except yaml.YAMLError as exc:  # e.g. a control character: no line/column mark
        report.note(f"not valid YAML: {' '.join(str(exc).split())}")
    except RecursionError:  # absurdly deep nesting: PyYAML recurses
        report.note("not usable YAML: it is nested too deeply")
    finally:
        loader.dispose()
    return _UNPARSED


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = exc.problem or exc.context or "syntax error"
    context = ""
    if exc.context and exc.problem and exc.context_mark:
        context = f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{where}invalid YAML: {problem}{context}"


def _top_level_problem(data: object) -> str:
    if data is None:
        return "the file is empty; it needs a mapping with keys such as environments and services"
    return (
        f"the top level must be a mapping of settings ({', '.join(TOP_KEYS)}), "
        f"got {_describe(data)}"
    )


# --- generic field readers ----------------------------------------------------------


def _section(
    report: _Report, path: str, value: object, allowed: Sequence[str]
) -> dict[Any, Any] | None:
    """A mapping of settings (null means {}), with unknown keys reported; None if not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        report.add(
            path, f"must be a mapping with keys {', '.join(allowed)}, got {_describe(value)}"
        )
        return None
    _check_keys(report, path, value, allowed)
    return value


def _check_keys(report: _Report, path: str, raw: dict[Any, Any], allowed: Sequence[str]) -> None:
    for key in raw:
        if not isinstance(key, str):
            report.add(_join(path, key), f"keys must be strings, got {_describe(key)}")
        elif key not in allowed:
            report.add(
                _join(path, key),
                f"unknown key{_suggest(key, allowed)}; allowed keys: {', '.join(allowed)}",
            )


def _take(
    report: _Report,
    raw: dict[Any, Any],
    path: str,
    key: str,
    parse: Callable[[object], T],
    default: T,
) -> T:
    """raw[key] parsed, or `default` when absent or bad (a bad value is reported)."""
    if key not in raw:
        return default
    try:
        return parse(raw[key])
    except ValueError as exc:
        report.add(_join(path, key), str(exc))
        return default


def _list(report: _Report, path: str, value: object, parse: Callable[[object], T]) -> tuple[T, ...]:
    """A list (null means []) whose items are parsed one by one; bad items are reported."""
    if value is None:
        return ()
    if not isinstance(value, list):
        report.add(path, f"must be a list, e.g. [a, b], got {_describe(value)}")
        return ()
    items: list[T] = []
    for index, item in enumerate(value):
        try:
            items.append(parse(item))
        except ValueError as exc:
            report.add(f"{path}[{index}]", str(exc))
    return tuple(items)


def _string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {_describe(value)}")
    return value


def _choice(options: Sequence[str]) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(
                f"must be one of {', '.join(options)}, got {_describe(value)}"
                + (_suggest(value, options) if isinstance(value, str) else "")
            )
        return value

    return parse


def _integer(minimum: int) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be an integer, got {_describe(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def _duration(positive: bool) -> Callable[[object], float]:
    """A duration reader; `positive` rejects 0 where zero would mean "fail at once"."""

    def parse(value: object) -> float:
        seconds = parse_duration(value)
        if positive and seconds == 0:
            raise ValueError(f"must be more than 0 (e.g. 30s), got {_show(value)}")
        return seconds

    return parse


def _idle_timeout(value: object) -> float | None:
    # null and "never" both mean the environment never sleeps.
    if value is None or value == NEVER:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f'{exc}, or "never" for an environment that never sleeps') from None
    if seconds == 0:
        raise ValueError('must be more than 0 (e.g. 15m), or "never" to never sleep')
    return seconds


def _size(value: object) -> int:
    size = parse_size(value)
    if size == 0:
        raise ValueError(f"must be at least 1 byte, got {_show(value)}")
    return size


# --- specific value readers -----------------------------------------------------------


def _is_dns_name(text: str) -> bool:
    return len(text) <= MAX_HOST_LENGTH and all(
        _DNS_LABEL.fullmatch(label) for label in text.split(".")
    )


def _domain(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f'must be a string such as "localhost", got {_describe(value)}')
    if not _is_dns_name(value):
        raise ValueError(
            f"{_show(value)} is not a DNS name: use labels of letters, digits and dashes "
            'joined by dots (e.g. "apps.example.com"), with no port or trailing dot'
        )
    # Hosts are matched case-insensitively, so keep the canonical lowercase form.
    return value.lower()


def _state_dir(base_dir: str) -> Callable[[object], str]:
    def parse(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f'must be a directory path such as ".wakegate", got {_describe(value)}'
            )
        # Relative to the config file, not to wherever the command happens to run.
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))

    return parse


def _address(value: object) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"."""
    if not isinstance(value, str):
        hint = f'; write "127.0.0.1:{value}"' if _is_number(value) else ""
        raise ValueError(f'must be a string "host:port", got {_describe(value)}{hint}')
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {_show(value)}: {_ADDRESS_HINT}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{_show(host)} in brackets is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {_show(value)}: {_ADDRESS_HINT}")
        if ":" in host:
            raise ValueError(
                f'bad address {_show(value)}: put an IPv6 address in brackets, "[::1]:8080"'
            )
        if not _is_dns_name(host):
            raise ValueError(
                f"bad address {_show(value)}: {_show(host)} is not a host name or IP address"
            )
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad address {_show(value)}: the port must be a number from 1 to 65535")
    return host, int(port)


def _hostname(value: object) -> str:
    if not isinstance(value, str) or not _is_dns_name(value.strip().rstrip(".")):
        raise ValueError(f'must be a DNS name such as "wakegate-controller.wakegate-system.svc" '
                         f"(no port), got {_describe(value)}")
    return value.strip().rstrip(".").lower()


def _origin(value: object) -> str:
    """A web origin as browsers send it in `Origin`: scheme://host[:port], lowercase."""
    if isinstance(value, str):
        text = value.strip().rstrip("/")
        parts = urllib.parse.urlsplit(text)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        host = parts.hostname or ""
        if (parts.scheme in ("http", "https") and port_ok and not parts.path
                and not parts.query and not parts.fragment and "@" not in parts.netloc
                and (_is_dns_name(host) or _is_ip(host))):
            return text.lower()
    raise ValueError('must be a web origin such as "https://admin.example.com" or '
                     '"http://localhost:3000" (scheme, host, port; no path), '
                     f"got {_describe(value)}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _controller(report: _Report, value: object,
                address: tuple[str, int]) -> spec.ControllerSettings:
    raw = _section(report, "controller", value, CONTROLLER_KEYS) or {}
    return spec.ControllerSettings(
        host=address[0],
        port=address[1],
        hostnames=_list(report, "controller.hostnames", raw.get("hostnames"), _hostname),
        allowed_origins=_list(report, "controller.allowed_origins", raw.get("allowed_origins"),
                              _origin),
    )


def _network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f'must be an IP address or CIDR string such as "10.0.0.0/8", got {_describe(value)}'
        )
    try:
        # strict=False: "10.1.2.3/8" means the network that contains it.
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f'{_show(value)} is not an IP address or CIDR (e.g. "10.0.0.0/8", "::1")'
        ) from None


def _command(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f'must be a string such as "{{python}} app.py --port {{port}}", got {_describe(value)}'
        )
    _check_placeholders(value)
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"cannot be split into words ({exc}); check the quotes") from None
    if not words:
        raise ValueError(
            'is empty; give the command that starts one replica, e.g. "{python} app.py"'
        )
    return value


def _check_placeholders(command: str) -> None:
    allowed = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    try:
        fields = list(string.Formatter().parse(command))
    except ValueError as exc:
        raise ValueError(
            f"has an unmatched brace ({exc}); write {{{{ or }}}} for a literal brace"
        ) from None
    for _, name, _, format_spec in fields:
        if name is None:
            continue
        if name not in PLACEHOLDERS or (format_spec and "{" in format_spec):
            raise ValueError(
                f"unknown placeholder {{{name}}}; allowed placeholders: {allowed} "
                "(write {{ or }} for a literal brace)"
            )


def _version(value: object) -> str:
    if _is_number(value):
        # YAML reads 1.0 as a number and 1.10 as 1.1, so the text written is lost.
        raise ValueError(f'must be a string, got number {value} (quote it: "{value}")')
    if not isinstance(value, str):
        raise ValueError(f'must be a string such as "1.0.0", got {_describe(value)}')
    if not _VERSION.fullmatch(value):
        raise ValueError(
            f"{_show(value)} is not a valid version: use 1 to 128 letters, digits, dots, "
            "dashes and underscores, starting with a letter or digit"
        )
    return value


def parse_version(value: object) -> str:
    """A version string as a command gives it; ValueError says what is wrong."""
    return _version(value)


def _http_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(
            f'must be a path starting with "/" (e.g. /healthz), got {_describe(value)}'
        )
    return value


def _ignore_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(
            f'must be a path starting with "/" (e.g. /healthz), got {_describe(value)}'
        )
    if "*" in value[:-1]:
        raise ValueError(f'{_show(value)}: "*" is only allowed at the end, to match a prefix')
    return value


def _user_agent(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'must be a non-empty string such as "kube-probe", got {_describe(value)}')
    return value


# --- sections -----------------------------------------------------------------------


def _listen(report: _Report, value: object) -> tuple[tuple[str, int], tuple[str, int]]:
    raw = _section(report, "listen", value, LISTEN_KEYS) or {}
    before = len(report)
    proxy = _take(
        report, raw, "listen", "proxy", _address, (_PROXY_DEFAULTS.host, _PROXY_DEFAULTS.port)
    )
    controller = _take(
        report,
        raw,
        "listen",
        "controller",
        _address,
        (_CONTROLLER_DEFAULTS.host, _CONTROLLER_DEFAULTS.port),
    )
    if len(report) == before and proxy == controller:
        report.add(
            "listen.controller",
            f"is the same address as listen.proxy ({proxy[0]}:{proxy[1]}); "
            "give them different ports",
        )
    return proxy, controller


def _proxy(report: _Report, value: object, address: tuple[str, int]) -> spec.ProxySettings:
    raw = _section(report, "proxy", value, (*PROXY_KEYS, *OBSOLETE_PROXY_KEYS)) or {}
    for key, why in OBSOLETE_PROXY_KEYS.items():
        if key in raw:
            report.warn(f"proxy.{key}", why)
    d = _PROXY_DEFAULTS
    return spec.ProxySettings(
        host=address[0],
        port=address[1],
        connect_timeout=_take(
            report, raw, "proxy", "connect_timeout", _duration(positive=True), d.connect_timeout
        ),
        read_timeout=_take(
            report, raw, "proxy", "read_timeout", _duration(positive=True), d.read_timeout
        ),
        max_body_size=_take(report, raw, "proxy", "max_body_size", _size, d.max_body_size),
        max_header_size=_take(report, raw, "proxy", "max_header_size", _size, d.max_header_size),
        trusted_proxies=_list(
            report, "proxy.trusted_proxies", raw.get("trusted_proxies"), _network
        ),
        header_timeout=_take(
            report, raw, "proxy", "header_timeout", _duration(positive=True), d.header_timeout
        ),
        keepalive_timeout=_take(
            report, raw, "proxy", "keepalive_timeout", _duration(positive=True),
            d.keepalive_timeout,
        ),
    )


def _kubernetes(report: _Report, value: object, base_dir: str) -> spec.KubernetesSettings:
    raw = _section(report, "kubernetes", value, KUBERNETES_KEYS) or {}
    d = spec.KubernetesSettings()
    kubeconfig = _take(report, raw, "kubernetes", "kubeconfig", _string, None)
    if kubeconfig is not None:
        kubeconfig = os.path.join(base_dir, os.path.expanduser(kubeconfig))
    settings = spec.KubernetesSettings(
        kubeconfig=kubeconfig,
        lease_namespace=_take(
            report, raw, "kubernetes", "lease_namespace", _dns_label, d.lease_namespace
        ),
        lease_name=_take(report, raw, "kubernetes", "lease_name", _dns_label, d.lease_name),
        lease_duration=_take(
            report, raw, "kubernetes", "lease_duration", _duration(positive=True),
            d.lease_duration,
        ),
        renew_deadline=_take(
            report, raw, "kubernetes", "renew_deadline", _duration(positive=True),
            d.renew_deadline,
        ),
        retry_period=_take(
            report, raw, "kubernetes", "retry_period", _duration(positive=True), d.retry_period
        ),
        activity_persist_interval=_take(
            report, raw, "kubernetes", "activity_persist_interval", _duration(positive=True),
            d.activity_persist_interval,
        ),
    )
    # client-go's rule: the leader must give up before anyone may take over.
    if not settings.retry_period < settings.renew_deadline < settings.lease_duration:
        report.add(
            "kubernetes",
            "needs retry_period < renew_deadline < lease_duration "
            f"(got {settings.retry_period:g}s, {settings.renew_deadline:g}s, "
            f"{settings.lease_duration:g}s)",
        )
    return settings


def _dns_label(value: object) -> str:
    text = _string(value)
    if not _SERVICE_NAME.fullmatch(text):
        raise ValueError(f"{_show(text)} is not a lowercase DNS label (RFC 1123)")
    return text


def _environments(report: _Report, value: object) -> tuple[dict[str, spec.Environment], list[str]]:
    """The valid environments, and every name the file defines (valid or not).

    Services are checked against all defined names so that one bad environment
    setting does not also make every service placed in it look wrong.
    """
    if value is None:
        value = {name: {} for name in DEFAULT_SERVICE_ENVIRONMENTS}
    if not isinstance(value, dict):
        report.add(
            "environments",
            f"must be a mapping of environment name to settings, got {_describe(value)}",
        )
        return {}, []
    result: dict[str, spec.Environment] = {}
    for name, settings in value.items():
        path = _join("environments", name)
        name_ok = _check_environment_name(report, path, name)
        environment = _environment(report, path, name, settings)
        if name_ok and environment is not None:
            result[name] = environment
    return result, [name for name in value if isinstance(name, str)]


def _check_environment_name(report: _Report, path: str, name: object) -> bool:
    if isinstance(name, str) and _ENVIRONMENT_NAME.fullmatch(name):
        return True
    report.add(
        path,
        f"environment name {_show(name)} is not valid: use 1 to 24 letters, digits and "
        f"dashes, starting with a letter{_quote_hint(name)}",
    )
    return False


def _environment(
    report: _Report, path: str, name: object, settings: object
) -> spec.Environment | None:
    raw = _section(report, path, settings, ENVIRONMENT_KEYS)
    if raw is None:
        return None
    before = len(report)
    kind = _environment_kind(report, path, name, raw)
    defaults = spec.KIND_DEFAULTS.get(kind or "", spec.KIND_DEFAULTS["private"])
    access = _take(report, raw, path, "access", _choice(ACCESS_MODES), defaults.access)
    idle_timeout = _take(report, raw, path, "idle_timeout", _idle_timeout, defaults.idle_timeout)
    replicas_before = len(report)
    min_replicas = _take(report, raw, path, "min_replicas", _integer(0), defaults.min_replicas)
    max_replicas = _take(report, raw, path, "max_replicas", _integer(0), defaults.max_replicas)
    if kind is not None and len(report) == replicas_before and min_replicas > max_replicas:
        report.add(
            _join(path, "min_replicas"),
            f"is {min_replicas}, more than max_replicas ({max_replicas}"
            f"{'' if 'max_replicas' in raw else f', the {kind} default'}); "
            "min_replicas must not exceed max_replicas",
        )
    hold_timeout = _take(
        report, raw, path, "hold_timeout", _duration(positive=True), spec.DEFAULT_HOLD_TIMEOUT
    )
    hold_queue_size = _take(
        report, raw, path, "hold_queue_size", _integer(1), spec.DEFAULT_HOLD_QUEUE_SIZE
    )
    scale_down_delay = _take(
        report, raw, path, "scale_down_delay", _duration(positive=False),
        spec.DEFAULT_SCALE_DOWN_DELAY,
    )
    wake_strategy = _take(report, raw, path, "wake_strategy", _choice(spec.WAKE_STRATEGIES),
                          "hold")
    crash_backoff = _crash_backoff(report, _join(path, "crash_backoff"), raw.get("crash_backoff"))
    if kind is None or len(report) > before:
        return None
    return spec.Environment(
        name=str(name),
        kind=kind,
        access=access,  # type: ignore[arg-type]  # checked against ACCESS_MODES
        idle_timeout=idle_timeout,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        hold_timeout=hold_timeout,
        hold_queue_size=hold_queue_size,
        scale_down_delay=scale_down_delay,
        wake_strategy=wake_strategy,
        crash_backoff=crash_backoff,
    )


def _crash_backoff(report: _Report, path: str, value: object) -> spec.CrashBackoff:
    raw = _section(report, path, value, CRASH_BACKOFF_KEYS) or {}
    d = spec.CrashBackoff()
    before = len(report)
    backoff = spec.CrashBackoff(
        after=_take(report, raw, path, "after", _integer(1), d.after),
        first=_take(report, raw, path, "first", _duration(positive=True), d.first),
        max=_take(report, raw, path, "max", _duration(positive=True), d.max),
    )
    if len(report) == before and backoff.first > backoff.max:
        report.add(_join(path, "first"), f"is {backoff.first:g}s, more than max "
                   f"({backoff.max:g}s); the back-off starts at first and doubles up to max")
    return backoff


def _environment_kind(report: _Report, path: str, name: object, raw: dict[Any, Any]) -> str | None:
    if "kind" in raw:
        return _take(report, raw, path, "kind", _choice(spec.KINDS), None)
    if isinstance(name, str) and name in spec.KINDS:
        return name
    report.add(
        _join(path, "kind"),
        f"is required because {_show(name)} is not itself a kind; "
        f"add kind: with one of {', '.join(spec.KINDS)}",
    )
    return None


def _services(report: _Report, value: object, defined: list[str]) -> dict[str, spec.Service]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        report.add(
            "services", f"must be a mapping of service name to settings, got {_describe(value)}"
        )
        return {}
    result: dict[str, spec.Service] = {}
    for name, settings in value.items():
        path = _join("services", name)
        name_ok = _check_service_name(report, path, name)
        service = _service(report, path, name, settings, defined)
        if name_ok and service is not None:
            result[name] = service
    return result


def _check_service_name(report: _Report, path: str, name: object) -> bool:
    if isinstance(name, str) and _SERVICE_NAME.fullmatch(name):
        return True
    report.add(
        path,
        f"service name {_show(name)} is not a DNS label: use 1 to 63 lowercase letters, "
        f"digits and dashes, starting and ending with a letter or digit{_quote_hint(name)}",
    )
    return False


def _quote_hint(name: object) -> str:
    # YAML 1.1 reads unquoted on/off/yes/no as booleans and 1.0 as a number.
    if isinstance(name, str):
        return ""
    return f" (YAML read this name as a {_type_name(name)}; quote it if you meant a name)"


def _service(
    report: _Report, path: str, name: object, settings: object, defined: list[str]
) -> spec.Service | None:
    raw = _section(report, path, settings, SERVICE_KEYS)
    if raw is None:
        return None
    before = len(report)
    if "command" not in raw:
        report.add(
            _join(path, "command"),
            "is required: the command that starts one replica, "
            'e.g. "{python} app.py --port {port}"',
        )
    d = _SERVICE_DEFAULTS
    command = _take(report, raw, path, "command", _command, "")
    version = _take(report, raw, path, "version", _version, DEFAULT_VERSION)
    environments = _service_environments(
        report, _join(path, "environments"), raw.get("environments"), defined
    )
    readiness = _readiness(report, _join(path, "readiness"), raw.get("readiness"))
    env = _env_vars(report, _join(path, "env"), raw.get("env"))
    start_timeout = _take(
        report, raw, path, "start_timeout", _duration(positive=True), d["start_timeout"]
    )
    stop_grace = _take(report, raw, path, "stop_grace", _duration(positive=False), d["stop_grace"])
    ignore_paths, ignore_user_agents = _activity(
        report, _join(path, "activity"), raw.get("activity")
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
    )


def _service_environments(
    report: _Report, path: str, value: object, defined: list[str]
) -> tuple[str, ...]:
    explicit = value not in (None, [])
    if not explicit:
        names: list[Any] = list(DEFAULT_SERVICE_ENVIRONMENTS)
    elif isinstance(value, list):
        names = value
    else:
        report.add(
            path,
            f"must be a list of environment names, e.g. [private, demo], got {_describe(value)}",
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
        return f"must be an environment name, got {_describe(name)}"
    if name in placed:
        return f"environment {_show(name)} is listed twice; list each environment once"
    if name not in defined:
        known = ", ".join(defined) if defined else "none"
        return (
            f"environment {_show(name)} is not defined{_suggest(name, defined)}; "
            f"defined environments: {known}"
        )
    return None


def _readiness(report: _Report, path: str, value: object) -> spec.Readiness:
    d = _READINESS_DEFAULTS
    raw = _section(report, path, value, READINESS_KEYS)
    if raw is None:
        return d
    timeout = _take(report, raw, path, "timeout", _duration(positive=True), d.timeout)
    if "http" in raw and "tcp" in raw:
        report.add(
            path, "has both http and tcp; choose exactly one: {http: /healthz} or {tcp: true}"
        )
        return d
    if "tcp" in raw:
        if raw["tcp"] is not True:
            report.add(
                _join(path, "tcp"),
                f"must be true (probe by TCP connect), got {_describe(raw['tcp'])}; "
                "to probe by HTTP write http: /path instead",
            )
        return spec.Readiness(http_path=None, tcp=True, timeout=timeout)
    http_path = _take(report, raw, path, "http", _http_path, d.http_path)
    return spec.Readiness(http_path=http_path, tcp=False, timeout=timeout)


def _env_vars(report: _Report, path: str, value: object) -> tuple[tuple[str, str], ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        report.add(path, f"must be a mapping of variable name to value, got {_describe(value)}")
        return ()
    pairs: list[tuple[str, str]] = []
    for key, item in value.items():
        item_path = _join(path, key)
        if not isinstance(key, str) or not _ENV_VAR.fullmatch(key):
            report.add(
                item_path,
                f"{_show(key)} is not a valid environment variable name: use letters, digits "
                "and underscores, not starting with a digit",
            )
        elif isinstance(item, str | int | float):  # bool is an int: "True"/"False"
            pairs.append((key, str(item)))
        else:
            report.add(item_path, f"must be a string, got {_describe(item)}")
    return tuple(pairs)


def _activity(report: _Report, path: str, value: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    raw = _section(report, path, value, ACTIVITY_KEYS)
    if raw is None:
        return (), ()
    paths = _list(report, _join(path, "ignore_paths"), raw.get("ignore_paths"), _ignore_path)
    agents = _list(
        report, _join(path, "ignore_user_agents"), raw.get("ignore_user_agents"), _user_agent
    )
    return paths, agents


def _check_hosts(
    report: _Report,
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
            path = _join("environments", environment)
            if host in owners:
                report.add(
                    path,
                    f"the host {_show(host)} of {instance} is also the host of "
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


def _build_config(report: _Report, file: str, data: dict[Any, Any]) -> spec.Config:
    """The Config for `data`; meaningful only if no problem was reported."""
    _check_keys(report, "", data, TOP_KEYS)
    base_dir = os.path.dirname(os.path.abspath(file))
    domain = _take(report, data, "", "domain", _domain, DEFAULT_DOMAIN)
    state_dir = _take(
        report,
        data,
        "",
        "state_dir",
        _state_dir(base_dir),
        os.path.join(base_dir, DEFAULT_STATE_DIR),
    )
    runtime = _take(report, data, "", "runtime", _choice(RUNTIMES), DEFAULT_RUNTIME)
    proxy_address, controller_address = _listen(report, data.get("listen"))
    proxy = _proxy(report, data.get("proxy"), proxy_address)
    controller = _controller(report, data.get("controller"), controller_address)
    kubernetes = _kubernetes(report, data.get("kubernetes"), base_dir)
    environments, defined = _environments(report, data.get("environments"))
    services = _services(report, data.get("services"), defined)
    _check_hosts(report, domain, environments, services)
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
    )
