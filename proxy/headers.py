"""What crosses the proxy: hop-by-hop headers removed, X-Forwarded-* set."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 §7.6.1, plus the de-facto Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
# What a client says about where a request came from (or which URL it asked
# for, as proxies in front of a service say it): believed only from a trusted
# proxy, else removed (the first three are then set by wakegate).
CLIENT_FORWARDED = ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Real-IP",
                    "Forwarded", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Server",
                    "X-Client-IP", "True-Client-IP", "X-Original-URL", "X-Rewrite-URL")
_CLIENT_FORWARDED = frozenset(name.lower() for name in CLIENT_FORWARDED)


def is_client_forwarded(lname: str) -> bool:
    """One of CLIENT_FORWARDED, also as `X_Forwarded_For`: CGI and WSGI servers turn both
    `-` and `_` into `_`, so a service would take the one for the other."""
    return lname in _CLIENT_FORWARDED or ("_" in lname and
                                          lname.replace("_", "-") in _CLIENT_FORWARDED)
# Set by the WebSocket client itself when it opens the upstream side.
WEBSOCKET_HANDSHAKE = frozenset(
    ("sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
     "sec-websocket-protocol", "sec-websocket-accept")
)


def connection_listed(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> frozenset[str]:
    """Every field named in Connection is hop-by-hop too."""
    values = headers.getall("Connection", ())
    if not values:
        return frozenset()
    return frozenset(
        token.strip().lower() for value in values for token in value.split(",") if token.strip()
    )


class TrustedProxies:
    """Peers whose X-Forwarded-* headers are believed; a peer's verdict is cached."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._nets = [ipaddress.ip_network(c, strict=False) for c in cidrs]
        self._cache: dict[str, bool] = {}

    def __contains__(self, peer: str | None) -> bool:
        if not self._nets or not peer:
            return False
        hit = self._cache.get(peer)
        if hit is None:
            try:
                addr = ipaddress.ip_address(peer)
            except ValueError:
                hit = False
            else:
                hit = any(addr in net for net in self._nets)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[peer] = hit
        return hit


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    peer: str | None,
    trusted: bool,
    scheme: str,
    drop: frozenset[str],
) -> CIMultiDict[str]:
    """The headers to send upstream: hop-by-hop and `drop` (lower-case names) removed."""
    listed = connection_listed(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in listed or lname in drop:
            continue
        if not trusted and is_client_forwarded(lname):
            continue  # an untrusted client's claims about where it came from
        out.add(name, value)
    if trusted:
        prior = ", ".join(incoming.getall("X-Forwarded-For", ()))
        out["X-Forwarded-For"] = f"{prior}, {peer}" if prior else (peer or "")
        out.setdefault("X-Forwarded-Proto", scheme)
        out.setdefault("X-Forwarded-Host", incoming.get("Host", ""))
    else:
        out["X-Forwarded-For"] = peer or ""
        out["X-Forwarded-Proto"] = scheme
        out["X-Forwarded-Host"] = incoming.get("Host", "")
    return out


def downstream_response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    listed = connection_listed(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lname = name.lower()
        if lname in HOP_BY_HOP or lname in listed or lname == "content-length":
            continue
        out.add(name, value)
    return out
