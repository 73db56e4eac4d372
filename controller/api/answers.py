"""How every handler of the API answers an error and reads a JSON body: one shape of error
(`{"error": code, "message": sentence}`), one way a body is checked."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadRequest(Exception):
    """An answer of 400 with this message (the app's middleware makes it)."""


def error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


def not_leader() -> web.Response:
    return error(503, "not_leader",
                 "This controller is not acting yet (it starts, or waits to become the "
                 "leader): retry, or ask the one that leads.")


async def json_body(request: web.Request, hint: str) -> Any:
    """The body's JSON, whatever it is; `hint` says what to send instead of what is not JSON."""
    try:
        return await request.json()
    except (ValueError, RecursionError):
        # Not JSON, not UTF-8, an integer of thousands of digits, nesting too deep.
        raise BadRequest(f"The body is not valid JSON. {hint}") from None


async def json_object(request: web.Request, hint: str, strings: tuple[str, ...] = (),
                      defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The body: a JSON object (with `defaults` for fields it lacks) whose `strings` fields are
    strings, else 400 saying what to send (`hint`)."""
    body = await json_body(request, hint)
    if not isinstance(body, dict):
        raise BadRequest(hint)
    body = {**(defaults or {}), **body}
    if not all(isinstance(body.get(name), str) for name in strings):
        if len(strings) == 1:
            raise BadRequest(hint)
        raise BadRequest(f"{' and '.join(strings)} must be strings. {hint}")
    return body
