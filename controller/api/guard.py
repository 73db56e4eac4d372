"""Who may call the controller API (`/v1/*`): holders of the token, never a web page.

Every `/v1/*` call, on loopback too, needs `Authorization: Bearer <token>`
(token.py). A browser cannot be made to send that, but a page can still
try to reach a local API, so browser-shaped requests are refused before the
token is even looked at:

- a `Host` that is not an IP address, `localhost` or a configured name
  (`controller.hostnames`) gets 421: a DNS-rebinding page that made
  evil.example resolve to 127.0.0.1 still sends `Host: evil.example`;
- an `Origin` header (browsers send it on cross-site requests) gets 403
  unless it is in `controller.allowed_origins`;
- a body that is not `application/json` gets 415: a cross-site form or a
  `text/plain` fetch cannot send JSON without a CORS preflight, which the
  Origin rule refuses.

/healthz, /readyz and /metrics are not `/v1/*` and stay open: they reveal no
secret and change nothing.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from aiohttp import web


class ApiGuard:
    def __init__(self, token: str, hostnames: Iterable[str] = (),
                 origins: Iterable[str] = ()) -> None:
        self._token = token.encode()
        self._hostnames = frozenset(h.lower().rstrip(".") for h in hostnames) | {"localhost"}
        self._origins = frozenset(o.rstrip("/").lower() for o in origins)

    def refusal(self, request: web.BaseRequest) -> web.Response | None:
        """The answer to a `/v1/*` request that may not be served, else None."""
        hosts = request.headers.getall("Host", ())
        if len(hosts) != 1 or not self._known_host(hosts[0]):
            return _error(421, "misdirected_request",
                          "The controller API answers only to its own address: an IP address, "
                          "localhost, or a name listed in controller.hostnames.")
        origin = request.headers.get("Origin")
        if origin is not None and origin.rstrip("/").lower() not in self._origins:
            return _error(403, "forbidden_origin",
                          "The controller API does not take calls from web pages (an Origin "
                          "header was sent); list the origin in controller.allowed_origins "
                          "if a page of yours must call it.")
        if not self._authorized(request):
            response = _error(401, "unauthorized",
                              "This call needs `Authorization: Bearer <token>`: the token is in "
                              "the controller's state_dir/api-token (the CLI reads it from "
                              "there with -c FILE), or in WAKEGATE_TOKEN.")
            response.headers["WWW-Authenticate"] = 'Bearer realm="wakegate"'
            return response
        if request.body_exists and request.content_type != "application/json":
            return _error(415, "unsupported_media_type",
                          "Send the body as JSON with `Content-Type: application/json`.")
        return None

    def _known_host(self, raw: str) -> bool:
        host = raw.strip().lower()
        if host.startswith("["):  # [v6]:port
            end = host.find("]")
            if end == -1:
                return False
            host = host[1:end]
        else:
            host = host.rpartition(":")[0] if ":" in host else host
        host = host.rstrip(".")
        if host in self._hostnames:
            return True
        try:
            ipaddress.ip_address(host)  # an address cannot be rebound to another one
        except ValueError:
            return False
        return True

    def _authorized(self, request: web.BaseRequest) -> bool:
        scheme, _, sent = request.headers.get("Authorization", "").partition(" ")
        # Compared in constant time, and always compared, whatever the scheme.
        same = hmac.compare_digest(sent.strip().encode("utf-8", "surrogateescape"),
                                   self._token)
        return same and scheme.lower() == "bearer"


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": code, "message": message}, status=status)
