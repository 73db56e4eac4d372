"""What crosses the proxy, one rule set for both paths.

Both proxy paths parse with llhttp (the fast path through httptools, the
aiohttp path through aiohttp's own parser) and hand this module the parser's
output: header fields as `(name, value)` byte pairs, in the order received
(`request.raw_headers` on the aiohttp path, the httptools callbacks on the
fast path). What leaves towards a service or back towards a client is
decided here only:

- hop-by-hop fields (RFC 9110 §7.6.1) and every field the `Connection`
  header names are removed, except the framing (`Content-Length`,
  `Transfer-Encoding`) and `Host`: dropping those because a client listed
  them would make the framing differ between what we parsed and what the
  other side reads (request smuggling);
- what a client claims about where it came from (X-Forwarded-*, Forwarded,
  X-Real-IP, ...) is believed from a trusted proxy only, else removed, and
  X-Forwarded-For/-Proto/-Host are set;
- wakegate's own credentials (X-API-Key, `Authorization: Bearer wg_...`)
  never reach a service;
- which methods may be sent again after a reset (idempotent ones);
- which status and error code each upstream failure gets (502 or 504).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from http import HTTPStatus

from controller.spec import API_KEY_PREFIX

Fields = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1, plus the de-facto Proxy-Connection and Keep-Alive.
HOP_BY_HOP = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate",
    b"proxy-authorization", b"te", b"trailer", b"transfer-encoding", b"upgrade",
))
# Never removed because Connection names them (see the module's docstring).
_FRAMING = frozenset((b"content-length", b"transfer-encoding", b"host"))
# What a client says about where a request came from (or which URL it asked
# for, as proxies in front of a service say it): believed only from a trusted
# proxy, else removed (the first three are then set by wakegate).
CLIENT_FORWARDED = frozenset((
    b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded",
    b"x-forwarded-port", b"x-forwarded-prefix", b"x-forwarded-server", b"x-client-ip",
    b"true-client-ip", b"x-original-url", b"x-rewrite-url",
))
# Set by the WebSocket client itself when it opens the upstream side.
WEBSOCKET_HANDSHAKE = frozenset((
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
))

# Fields a request carries once at most: a second one is refused (400) on both
# paths. aiohttp's parser refuses them (its SINGLETON_HEADERS); the fast path
# hands such a request to it, so that one rule answers.
SINGLE_FIELDS = frozenset((
    b"content-length", b"content-location", b"content-range", b"content-type", b"etag",
    b"host", b"max-forwards", b"server", b"transfer-encoding", b"user-agent",
))

# The most header fields a request may have: aiohttp's parser refuses more (431),
# and the fast path hands such a request to it. One number for both (app.py).
MAX_FIELDS = 128

API_KEY_FIELD = b"x-api-key"
_BEARER = b"bearer"
_PREFIX = API_KEY_PREFIX.encode()

# Sent again once, on a new connection, when the upstream reset before answering
# (and only without a body: a body may have been partly consumed).
IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))

# Upstream failures before anything of the answer went out: (status, error code,
# message). After the answer started, a failure can only cut it short.
RESET = (502, "upstream_reset", "The service closed the connection without answering.")
BROKE_OFF = (502, "upstream_reset", "The service broke off its answer.")
INVALID = (502, "upstream_invalid", "The service answered with a malformed response.")


def timed_out(connect: float | None, read: float) -> tuple[int, str, str]:
    """504: the service did not answer within the proxy's timeouts."""
    which = f"connect {connect:g}s, read {read:g}s" if connect is not None else f"read {read:g}s"
    return 504, "upstream_timeout", f"The service did not answer in time ({which})."


def is_client_forwarded(lname: bytes) -> bool:
    """One of CLIENT_FORWARDED, also as `X_Forwarded_For`: CGI and WSGI servers turn both
    `-` and `_` into `_`, so a service would take the one for the other."""
    return lname in CLIENT_FORWARDED or (b"_" in lname and
                                         lname.replace(b"_", b"-") in CLIENT_FORWARDED)


def _listed(value: bytes) -> set[bytes]:
    """The names one Connection field lists that are not already removed: framing
    aside, and hop-by-hop ones (`keep-alive`, `close`) need no second pass."""
    return {token.strip() for token in value.lower().split(b",")} - _NOT_LISTED


_NOT_LISTED = _FRAMING | HOP_BY_HOP | {b"", b"close"}
_PLAIN_CONNECTION = frozenset((b"keep-alive", b"close"))  # nearly every answer says one


def bearer_token(value: bytes) -> bytes | None:
    """The token of `Authorization: Bearer <token>` (any whitespace after the scheme)."""
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != _BEARER:
        return None
    return parts[1].strip() or None


def is_wakegate_bearer(value: bytes) -> bool:
    """`Authorization: Bearer wg_...`: a wakegate API key, not the service's own credential."""
    token = bearer_token(value)
    return token is not None and token.startswith(_PREFIX)


# The request fields request_fields() looks at; every other one passes with one set
# lookup (a name with `_` is looked at too: see is_client_forwarded).
_REQUEST_SPECIAL = HOP_BY_HOP | CLIENT_FORWARDED | {b"host", API_KEY_FIELD, b"authorization"}


def request_fields(fields: Fields, *, peer: str, trusted: bool, scheme: str,
                   drop: frozenset[bytes] = frozenset()) -> list[tuple[bytes, bytes]]:
    """The fields to send upstream, in the order received, X-Forwarded-* last.

    Removed: hop-by-hop fields and those Connection names; wakegate's credentials
    (X-API-Key always, Authorization when it carries `Bearer wg_...`); an untrusted
    peer's forwarding claims; and `drop` (lower-case names: Authorization when a
    private key came in it, Expect where the proxy answers it).
    """
    out: list[tuple[bytes, bytes]] = []
    listed: set[bytes] | None = None
    prior: list[bytes] = []
    host = b""
    have_proto = have_host = False
    for field in fields:
        name, value = field
        lname = name.lower()
        if lname not in _REQUEST_SPECIAL and b"_" not in lname:
            if not drop or lname not in drop:
                out.append(field)
            continue
        if lname in HOP_BY_HOP:
            if lname == b"connection" and value.lower() not in _PLAIN_CONNECTION:
                listed = (listed or set()) | _listed(value)
            continue
        if lname in drop or lname == API_KEY_FIELD:
            continue
        if lname == b"host":
            host = value
        elif lname == b"authorization":
            if is_wakegate_bearer(value):
                continue
        elif is_client_forwarded(lname):
            if not trusted:
                continue  # an untrusted client's claims about where it came from
            if lname == b"x-forwarded-for":
                if value.strip():
                    prior.append(value)
                continue
            have_proto = have_proto or lname == b"x-forwarded-proto"
            have_host = have_host or lname == b"x-forwarded-host"
        out.append(field)
    if listed:
        out = [field for field in out if field[0].lower() not in listed]
    address = peer.encode()
    out.append((b"X-Forwarded-For", b", ".join((*prior, address)) if prior else address))
    if not have_proto:
        out.append((b"X-Forwarded-Proto", scheme.encode()))
    if not have_host:
        out.append((b"X-Forwarded-Host", host))
    return out


def response_fields(fields: Fields) -> tuple[list[tuple[bytes, bytes]], int | None, bool]:
    """(the fields of an answer to pass back, its Content-Length or None, chunked).

    Removed: hop-by-hop fields and those Connection names. Content-Length is kept: a
    path that frames the body itself replaces it. The framing is llhttp's, already
    checked (a malformed or repeated length, a length beside Transfer-Encoding are
    refused there); a transfer coding other than a lone `chunked` is refused here
    (ValueError): passing it on would need its name, which is hop-by-hop.
    """
    out: list[tuple[bytes, bytes]] = []
    listed: set[bytes] | None = None
    length: int | None = None
    codings: list[bytes] = []
    for field in fields:
        lname = field[0].lower()
        if lname in HOP_BY_HOP:
            if lname == b"connection":
                if field[1].lower() not in _PLAIN_CONNECTION:
                    listed = (listed or set()) | _listed(field[1])
            elif lname == b"transfer-encoding":
                codings += [c.strip() for c in field[1].lower().split(b",")]
            continue
        if lname == b"content-length":
            length = int(field[1])
        out.append(field)
    if codings and codings != [b"chunked"]:
        raise ValueError("a transfer coding other than chunked")
    if listed:
        out = [field for field in out if field[0].lower() not in listed]
    return out, length, bool(codings)


_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def head_answer_reusable(length: int | None, chunked: bool) -> bool:
    """Whether the connection of an answer to HEAD may be pooled: not when the answer
    announces a body. A service that answers HEAD as GET sends that body anyway, maybe
    late, and on a pooled connection it would be read as the next request's answer."""
    return not length and not chunked


def reason_phrase(status: int, reason: bytes) -> bytes:
    """The reason phrase to pass on: the service's, unless it holds control bytes (a
    terminal escape, a NUL: llhttp lets them through, aiohttp's writer refuses them),
    then the standard one for the status."""
    if not _CONTROL.search(reason):
        return reason
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def render(fields: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Header lines as sent on the wire, each ending in CRLF."""
    return b"".join([name + b": " + value + b"\r\n" for name, value in fields])


def as_text(fields: Iterable[tuple[bytes, bytes]], strict: bool = True) -> list[tuple[str, str]]:
    """Fields as text for aiohttp, which writes text as UTF-8.

    `strict`: UnicodeDecodeError for a value that is not UTF-8 (aiohttp's client
    would drop its other bytes without a word: such a request is refused instead).
    Else such bytes are dropped, as aiohttp's own server does with its headers.
    """
    errors = "strict" if strict else "surrogateescape"
    return [(name.decode("latin-1"), value.decode("utf-8", errors)) for name, value in fields]


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

