"""The parsers of specific values: names, addresses, origins, networks, commands, versions, paths.

Each takes one YAML value and returns it checked (and, for host names,
lowercased: hosts are matched ignoring case), or raises ValueError with a
sentence a person can act on; `fields.take` turns that into a problem at the
field's path. `parse_version` is also how the commands check a version given
on the command line or to the API.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import urllib.parse
from collections.abc import Callable
from string import Formatter

from controller.config.fields import parse_string
from controller.config.report import describe
from controller.names import is_dns_label, is_dns_name, is_version
from controller.units import is_number, show

__all__ = [
    "PLACEHOLDERS",
    "parse_address",
    "parse_command",
    "parse_dns_label",
    "parse_domain",
    "parse_hostname",
    "parse_http_path",
    "parse_ignore_path",
    "parse_network",
    "parse_origin",
    "parse_user_agent",
    "parse_version",
    "state_dir_parser",
]

PLACEHOLDERS = ("port", "version", "python")  # what a service's command may contain

_PORT = re.compile(r"[0-9]{1,5}")
_ADDRESS_HINT = 'use "host:port" (e.g. "127.0.0.1:8080") or "[v6]:port" (e.g. "[::1]:8080")'


def _string_such_as(value: object, example: str) -> str:
    """`value` if it is a string; else a problem that shows what one looks like."""
    if not isinstance(value, str):
        raise ValueError(f'must be a string such as "{example}", got {describe(value)}')
    return value


def parse_domain(value: object) -> str:
    text = _string_such_as(value, "localhost")
    if not is_dns_name(text):
        raise ValueError(
            f"{show(text)} is not a DNS name: use labels of letters, digits and dashes "
            'joined by dots (e.g. "apps.example.com"), with no port or trailing dot'
        )
    # Hosts are matched case-insensitively, so keep the canonical lowercase form.
    return text.lower()


def state_dir_parser(base_dir: str) -> Callable[[object], str]:
    """A parser of directory paths, relative to `base_dir` (the config file's directory)."""

    def parse(value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(
                f'must be a directory path such as ".wakegate", got {describe(value)}'
            )
        # Relative to the config file, not to wherever the command happens to run.
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(value)))

    return parse


def parse_address(value: object) -> tuple[str, int]:
    """("host", port) from "host:port" or "[v6]:port"."""
    if not isinstance(value, str):
        hint = f'; write "127.0.0.1:{value}"' if is_number(value) else ""
        raise ValueError(f'must be a string "host:port", got {describe(value)}{hint}')
    text = value.strip()
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bad address {show(value)}: {_ADDRESS_HINT}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{show(host)} in brackets is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep or not host:
            raise ValueError(f"bad address {show(value)}: {_ADDRESS_HINT}")
        if ":" in host:
            raise ValueError(
                f'bad address {show(value)}: put an IPv6 address in brackets, "[::1]:8080"'
            )
        if not is_dns_name(host):
            raise ValueError(
                f"bad address {show(value)}: {show(host)} is not a host name or IP address"
            )
    if not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise ValueError(f"bad address {show(value)}: the port must be a number from 1 to 65535")
    return host, int(port)


def parse_hostname(value: object) -> str:
    if not isinstance(value, str) or not is_dns_name(value.strip().rstrip(".")):
        raise ValueError(f'must be a DNS name such as "wakegate-controller.wakegate-system.svc" '
                         f"(no port), got {describe(value)}")
    return value.strip().rstrip(".").lower()


def parse_origin(value: object) -> str:
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
                and (is_dns_name(host) or _is_ip(host))):
            return text.lower()
    raise ValueError('must be a web origin such as "https://admin.example.com" or '
                     '"http://localhost:3000" (scheme, host, port; no path), '
                     f"got {describe(value)}")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def parse_network(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(
            f'must be an IP address or CIDR string such as "10.0.0.0/8", got {describe(value)}'
        )
    try:
        # strict=False: "10.1.2.3/8" means the network that contains it.
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError(
            f'{show(value)} is not an IP address or CIDR (e.g. "10.0.0.0/8", "::1")'
        ) from None


def parse_dns_label(value: object) -> str:
    text = parse_string(value)
    if not is_dns_label(text):
        raise ValueError(f"{show(text)} is not a lowercase DNS label (RFC 1123)")
    return text


def parse_command(value: object) -> str:
    command = _string_such_as(value, "{python} app.py --port {port}")
    _check_placeholders(command)
    try:
        words = shlex.split(command)
    except ValueError as exc:
        raise ValueError(f"cannot be split into words ({exc}); check the quotes") from None
    if not words:
        raise ValueError(
            'is empty; give the command that starts one replica, e.g. "{python} app.py"'
        )
    return command


def _check_placeholders(command: str) -> None:
    allowed = ", ".join(f"{{{name}}}" for name in PLACEHOLDERS)
    try:
        fields = list(Formatter().parse(command))
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


def parse_version(value: object) -> str:
    """A version string as the file or a command gives it; ValueError says what is wrong."""
    if is_number(value):
        # YAML reads 1.0 as a number and 1.10 as 1.1, so the text written is lost.
        raise ValueError(f'must be a string, got number {value} (quote it: "{value}")')
    version = _string_such_as(value, "1.0.0")
    if not is_version(version):
        raise ValueError(
            f"{show(version)} is not a valid version: use 1 to 128 letters, digits, dots, "
            "dashes and underscores, starting with a letter or digit"
        )
    return version


def parse_http_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or any(c.isspace() for c in value):
        raise ValueError(
            f'must be a path starting with "/" (e.g. /healthz), got {describe(value)}'
        )
    return value


def parse_ignore_path(value: object) -> str:
    """A path whose requests do not count as activity; a trailing * matches a prefix."""
    path = parse_http_path(value)
    if "*" in path[:-1]:
        raise ValueError(f'{show(path)}: "*" is only allowed at the end, to match a prefix')
    return path


def parse_user_agent(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f'must be a non-empty string such as "kube-probe", got {describe(value)}')
    return value
