"""Who may call an instance: public, or by API key for private ones."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from multidict import CIMultiDictProxy

from controller.spec import API_KEY_PREFIX, Route

API_KEY_HEADER = "X-API-Key"
BEARER = "bearer"

# Why the check failed, as the `reason` label of wakegate_auth_failures_total.
MISSING = "missing"
INVALID = "invalid"
QUERY_STRING = "query_string"

_QUERY_KEY_NAMES = ("api_key=", "apikey=", "api-key=", "key=", "token=", "access_token=")


def bearer_token(value: str) -> str | None:
    """The token of `Authorization: Bearer <token>` (any whitespace after the scheme)."""
    scheme, _, token = value.strip().partition(" ")
    if not token and "\t" in scheme:
        scheme, _, token = scheme.partition("\t")
    if scheme.lower() != BEARER or not token.strip():
        return None
    return token.strip()


def presented_key(headers: Mapping[str, str]) -> tuple[str | None, bool]:
    """The key the client sent and whether it came in Authorization (vs X-API-Key)."""
    key = headers.get(API_KEY_HEADER)
    if key:
        return key.strip(), False
    auth = headers.get("Authorization")
    token = bearer_token(auth) if auth else None
    if token is not None:
        return token, True
    return None, False


_NO_CREDENTIALS = frozenset(("x-api-key",))
_CREDENTIALS = frozenset(("x-api-key", "authorization"))


def is_wakegate_bearer(value: str | bytes) -> bool:
    """`Authorization: Bearer wg_...`: a wakegate API key, not the service's own credential."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    token = bearer_token(value)
    return token is not None and token.startswith(API_KEY_PREFIX)


def credential_headers(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    """The (lower-case) names of the headers that carry a wakegate key, on any route.

    X-API-Key is wakegate's own header; Authorization only when it carries a
    bearer token with wakegate's key prefix (else it is the service's own).
    """
    for value in headers.getall("Authorization", ()):
        if is_wakegate_bearer(value):
            return _CREDENTIALS
    return _NO_CREDENTIALS


def key_matches(key: str, hashes: tuple[bytes, ...]) -> bytes | None:
    """The stored digest `key` matches, or None; constant time in the key and over all
    stored hashes: no early exit."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
    found = None
    for stored in hashes:
        if hmac.compare_digest(digest, stored):
            found = stored
    return found


def check(route: Route, headers: Mapping[str, str],
          query: str) -> tuple[str | None, bool, bytes | None]:
    """(failure reason or None, whether Authorization carries a key to strip, the digest of
    the key that matched)."""
    key, in_authorization = presented_key(headers)
    if key is None:
        if query and any(name in query.lower() for name in _QUERY_KEY_NAMES):
            return QUERY_STRING, False, None
        return MISSING, False, None
    matched = key_matches(key, route.key_hashes)
    if matched is None:
        return INVALID, in_authorization, None
    if not in_authorization:
        # The key may have been sent both ways at once: Authorization then
        # carries a secret too and must not reach the upstream either.
        auth = headers.get("Authorization")
        token = bearer_token(auth) if auth else None
        if token is not None and key_matches(token, route.key_hashes) is not None:
            return None, True, matched
    return None, in_authorization, matched


FAILURE_MESSAGES = {
    MISSING: "This is a private service: send its API key in the X-API-Key header "
    "or as `Authorization: Bearer <key>`. `wakegate keys create` makes one.",
    INVALID: "The API key is not valid for this service. Check that it belongs to this "
    "service and environment, or make a new one with `wakegate keys create`.",
    QUERY_STRING: "API keys are not accepted in the query string, where they end up in "
    "logs: send the key in the X-API-Key header or as `Authorization: Bearer <key>`.",
}
