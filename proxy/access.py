"""Who may call an instance: public, or by API key for private ones."""

from __future__ import annotations

import hashlib
import hmac

from controller.spec import Route

from .policy import API_KEY_FIELD, Fields, bearer_token

# Why the check failed, as the `reason` label of wakegate_auth_failures_total.
MISSING = "missing"
INVALID = "invalid"
QUERY_STRING = "query_string"

_QUERY_KEY_NAMES = ("api_key=", "apikey=", "api-key=", "key=", "token=", "access_token=")


def _first(fields: Fields, lname: bytes) -> bytes | None:
    for name, value in fields:
        if name.lower() == lname:
            return value
    return None


def presented_key(fields: Fields) -> tuple[bytes | None, bool]:
    """The key the client sent and whether it came in Authorization (vs X-API-Key)."""
    key = _first(fields, API_KEY_FIELD)
    if key and key.strip():
        return key.strip(), False
    auth = _first(fields, b"authorization")
    token = bearer_token(auth) if auth else None
    if token is not None:
        return token, True
    return None, False


def key_matches(key: bytes, hashes: tuple[bytes, ...]) -> bytes | None:
    """The stored digest `key` matches, or None; constant time in the key and over all
    stored hashes: no early exit."""
    digest = hashlib.sha256(key).digest()
    found = None
    for stored in hashes:
        if hmac.compare_digest(digest, stored):
            found = stored
    return found


def check(route: Route, fields: Fields,
          query: str) -> tuple[str | None, bool, bytes | None]:
    """(failure reason or None, whether Authorization carries a key to strip, the digest of
    the key that matched). `fields`: the request's header fields as parsed (bytes)."""
    key, in_authorization = presented_key(fields)
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
        auth = _first(fields, b"authorization")
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
