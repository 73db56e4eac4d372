"""Host → route: the only input that picks a route is the Host header.

X-Forwarded-Host and the request target never choose a route, so neither can
reach a more privileged instance than the Host header names (the target's
rules are in targets.py).
"""

from __future__ import annotations


def normalize_host(raw: str) -> str:
    """Lower-case, drop a port and one trailing dot; "" (no route) for anything not ASCII.

    `Hello.Demo.Localhost.:8080` → `hello.demo.localhost`. Only spaces and tabs
    around it are ignored, and no Unicode case folding or whitespace counts: a
    Host is matched as the ingress in front of wakegate (and its rules) saw it.
    """
    host = raw.strip(" \t")
    if not host.isascii():
        return ""
    host = host.lower()
    if host.startswith("["):  # IPv6 literal, maybe with a port
        end = host.find("]")
        return host[: end + 1] if end != -1 else host
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host[:-1] if host.endswith(".") else host
