"""An upstream's answer passed back to the client (the aiohttp path).

Its fields pass through the response rules (policy.py); a small body is read
whole and sent in one write, a larger one (or one of unknown length) streams.
Once the status line is out, an upstream failure can only cut the answer
short: the client connection is closed so the client sees it truncated.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from . import policy
from .errors import UpstreamError

# Responses up to this size are read whole and sent in one write.
_BUFFER_LIMIT = 64 * 1024


async def respond(
    request: web.BaseRequest,
    upstream: aiohttp.ClientResponse,
    extra: dict[str, str] | None,
    read_timeout: float,
) -> web.StreamResponse:
    """The answer to `request` from `upstream`, with the `extra` fields (a cold start's)."""
    try:
        try:
            passed = policy.response_fields(upstream.raw_headers)[0]
        except ValueError:
            raise UpstreamError.of(policy.INVALID) from None
        # aiohttp frames the body itself (its Content-Length or chunked).
        headers = CIMultiDict(policy.as_text(
            (field for field in passed if field[0].lower() != b"content-length"),
            strict=False))
        if extra:
            headers.update(extra)
        reason = policy.reason_phrase(
            upstream.status, (upstream.reason or "").encode("utf-8", "surrogateescape")
        ).decode("utf-8", "replace")
        length = upstream.content_length
        no_body = request.method == "HEAD" or upstream.status in (204, 304)
        if request.method == "HEAD" and not policy.head_answer_reusable(
                length, "Transfer-Encoding" in upstream.headers):
            _unpool(upstream)
        if not no_body and length is not None and length <= _BUFFER_LIMIT:
            try:
                data = await upstream.read()
            except TimeoutError:
                raise UpstreamError.of(policy.timed_out(None, read_timeout)) from None
            except aiohttp.ClientError:
                raise UpstreamError.of(policy.BROKE_OFF) from None
            return web.Response(status=upstream.status, reason=reason, body=data,
                                headers=headers)
        resp = web.StreamResponse(status=upstream.status, reason=reason, headers=headers)
        if length is not None:
            resp.content_length = length
        await resp.prepare(request)
        if not no_body:
            # Once the status line is out, an upstream failure can only
            # cut the response short, as the upstream did: close the
            # client connection so it sees a truncated answer, never one
            # that looks complete.
            try:
                async for chunk in upstream.content.iter_any():
                    await resp.write(chunk)
            except (aiohttp.ClientError, TimeoutError):
                _cut(request)
                return resp
        await resp.write_eof()
        return resp
    finally:
        upstream.release()


def _unpool(upstream: aiohttp.ClientResponse) -> None:
    """Close the connection of an answer aiohttp has already put back in its pool.

    aiohttp pools the connection of an answer without a body (HEAD) as soon as
    its head is read, before `session.request` returns (with no await in
    between, so no other request took it yet); its pool skips a closed one.
    Relies on aiohttp 3.14's ClientResponse._protocol (pinned in pyproject)."""
    protocol = getattr(upstream, "_protocol", None)
    transport = getattr(protocol, "transport", None)
    if transport is not None:
        transport.close()


def _cut(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()
