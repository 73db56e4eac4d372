"""JSON error responses: the status table of docs/contract.md, with a sentence to act on."""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import Self

from aiohttp import web

from controller.spec import Route


class HttpError(Exception):
    """Nothing of the answer went out yet: the client gets `status` with this code and message.

    The status table's failures (policy.RESET, INVALID, timed_out(...)) are such triples.
    """

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def of(cls, failure: tuple[int, str, str]) -> Self:
        return cls(*failure)


class UpstreamError(HttpError):
    """Forwarding failed before anything of the upstream's answer was sent to the client."""


def error_body(code: str, message: str, route: Route | None = None) -> bytes:
    body: dict[str, str | None] = {"error": code, "message": message}
    if route is not None:
        body["environment"] = route.environment
        body["service"] = route.service
    return json.dumps(body).encode() + b"\n"


def raw_error(status: int, code: str, message: str, route: Route | None = None) -> bytes:
    """A whole JSON error answer as bytes, ending the connection (`Connection: close`): for
    answers written straight to a transport (the fast path, the header timeout)."""
    body = error_body(code, message, route)
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n" % (status, HTTPStatus(status).phrase.encode(),
                                              len(body))) + body


def request_timeout(header_timeout: float) -> bytes:
    """The 408 a connection gets when no request head arrived within proxy.header_timeout
    (both proxy paths send it outside any request, then close the connection)."""
    return raw_error(
        408, "header_timeout",
        f"The request line and headers did not all arrive within {header_timeout:g}s "
        "(proxy.header_timeout): send the whole request head at once, or retry on a "
        "new connection.",
    )


def error_response(
    status: int,
    code: str,
    message: str,
    route: Route | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(code, message, route),
        content_type="application/json",
        headers=headers,
    )


def no_route(host: str) -> web.Response:
    # The host is echoed back to the caller who sent it; it is never logged or
    # put in a metric label.
    return error_response(
        404,
        "no_route",
        f"No service answers at host {host!r}. Hosts look like "
        "<service>.<environment>.<domain>; `wakegate status` lists them.",
    )


def unauthorized(route: Route, message: str) -> web.Response:
    return error_response(
        401,
        "unauthorized",
        message,
        route,
        headers={"WWW-Authenticate": 'ApiKey realm="wakegate"'},
    )


def unavailable(route: Route, code: str, message: str, retry_after: int) -> web.Response:
    return error_response(503, code, message, route, headers={"Retry-After": str(retry_after)})
