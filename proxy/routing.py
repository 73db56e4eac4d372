"""Host → route: the only input that picks a route is the Host header.

X-Forwarded-Host and the absolute-form request target never choose a route,
so neither can reach a more privileged instance than the Host header names.
"""

from __future__ import annotations

from controller.spec import Route, RouteTable


def normalize_host(raw: str) -> str:
    """Lower-case, drop a port and a trailing dot.

    `Hello.Demo.Localhost.:8080` → `hello.demo.localhost`.
    """
    host = raw.strip().lower()
    if host.startswith("["):  # IPv6 literal, maybe with a port
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host.rstrip(".")


def lookup(table: RouteTable, raw_host: str) -> Route | None:
    return table.by_host.get(normalize_host(raw_host))


def absolute_target_host(target: str) -> str | None:
    """The host of an absolute-form request target (`GET http://h/p`), else None."""
    lowered = target[:8].lower()
    if not (lowered.startswith("http://") or lowered.startswith("https://")):
        return None
    rest = target.split("://", 1)[1]
    authority = rest.split("/", 1)[0].split("?", 1)[0]
    authority = authority.rsplit("@", 1)[-1]  # userinfo never names a host
    return normalize_host(authority)


def origin_form(target: str) -> str:
    """The path and query of a request target, whatever its form."""
    if absolute_target_host(target) is None:
        return target
    rest = target.split("://", 1)[1]
    slash = rest.find("/")
    query = rest.find("?")
    if slash == -1 and query == -1:
        return "/"
    if slash == -1 or (query != -1 and query < slash):
        return "/" + rest[query:]
    return rest[slash:]
