"""The request target never chooses where a request goes, only which path the routed instance gets.

The Host header picks the route, and the route's endpoints are the only
addresses a request is ever sent to. The request target is reduced to an
origin-form target (`/path?query`) that is sent to that endpoint; everything
that is not such a target, or an absolute-form `http(s)://` target naming
the same host, is refused before anything is forwarded:

- `CONNECT` (authority-form, a tunnel to anywhere): 405 with `Allow`;
- `OPTIONS *` is answered by the proxy itself (see `SERVER_WIDE`);
- absolute-form targets of other schemes (`ws://`, `x://`), authority-form
  targets (`host:port`) and anything else: 400.

A path that starts with several slashes or backslashes (`//evil/x`,
`/\\evil/x`) is sent with a single `/`: many URL libraries read `//evil/x`
as "host evil", and browsers read `/\\evil` as `//evil`, so a service that
echoes its path into a Location header would become an open redirect.
A fragment (`#...`) is never part of a request target and is dropped.
"""

from __future__ import annotations

import re

from .errors import HttpError
from .routing import normalize_host

# The methods a wakegate route forwards (CONNECT is refused, TRACE is a
# service's own business); the Allow header of a 405 and of `OPTIONS *`.
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# What `OPTIONS *` (a question about the server, not a resource) gets.
SERVER_WIDE = "*"

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_LEADING_SLASHES = re.compile(r"[/\\]+")


class TargetRefused(HttpError):
    """The request target is not one wakegate forwards: answer `status` with this code."""


def upstream_target(method: str, raw: str, route_host: str) -> str:
    """The origin-form target (`/path?query`) to send to the routed instance.

    `raw` is the request target as received; `route_host` the host of the
    route the Host header picked. Returns SERVER_WIDE for `OPTIONS *`.
    Raises TargetRefused for every other form.
    """
    if method == "CONNECT":
        raise TargetRefused(
            405, "method_not_allowed",
            "wakegate does not open tunnels (CONNECT): send the request itself to the "
            "service's host.")
    if raw.startswith("/"):
        return _origin_form(raw)
    if raw == SERVER_WIDE:
        if method == "OPTIONS":
            return SERVER_WIDE
        raise TargetRefused(400, "bad_target", "The target * is only valid for OPTIONS.")
    scheme = _SCHEME.match(raw)
    if scheme is None:
        raise TargetRefused(
            400, "bad_target",
            "The request target must be a path such as /index.html (or an http:// URL of "
            "this same host).")
    if scheme[0].lower() not in ("http://", "https://"):
        raise TargetRefused(
            400, "bad_target",
            f"A {scheme[0][:-3]!r} URL is not a request wakegate forwards: send a path such as "
            "/index.html with the service's Host header.")
    rest = raw[scheme.end():]
    end = len(rest)
    for stop in "/?#":
        found = rest.find(stop)
        if found != -1:
            end = min(end, found)
    authority, rest = rest[:end], rest[end:]
    # Userinfo (`a@`) never names a host; what follows the last `@` does.
    if normalize_host(authority.rsplit("@", 1)[-1]) != route_host:
        raise TargetRefused(
            400, "ambiguous_host", "The request target names a different host than the Host "
            "header.")
    return _origin_form(rest if rest.startswith("/") else "/" + rest)


def _origin_form(target: str) -> str:
    """`target` (starting with `/` or `?`) with one leading slash and no fragment."""
    target = target.split("#", 1)[0]
    leading = _LEADING_SLASHES.match(target)
    if leading is not None and leading.end() > 1:
        target = "/" + target[leading.end():]
    return target or "/"


def split_target(target: str) -> tuple[str, str]:
    """(path, query string) of an origin-form target."""
    path, _, query = target.partition("?")
    return path, query
