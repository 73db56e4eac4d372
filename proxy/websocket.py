"""A WebSocket relayed between the client and one of the instance's endpoints (aiohttp path).

The upstream WebSocket is opened first, so a refusal becomes an HTTP error
(the client's handshake has not been answered yet); then messages are copied
both ways until either side closes, and the other is closed with its code.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from controller.spec import Route

from . import policy
from .errors import UpstreamError
from .forward import Forwarder, upstream_url
from .targets import split_target


async def relay_websocket(
    forwarder: Forwarder,
    request: web.BaseRequest,
    route: Route,
    target: str,
    headers: CIMultiDict[str],
    extra: dict[str, str] | None,
) -> web.StreamResponse:
    """Open the upstream WebSocket first, so a refusal becomes an HTTP error."""
    offered = [
        p.strip()
        for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        if p.strip()
    ]
    if not web.WebSocketResponse().can_prepare(request).ok:
        # Checked before anything is opened upstream: a broken handshake is the
        # client's, answered 400 here.
        raise UpstreamError(400, "bad_request",
                            "The WebSocket handshake is not valid (Sec-WebSocket-Key, "
                            "Sec-WebSocket-Version 13, GET).")
    for name in policy.WEBSOCKET_HANDSHAKE:
        headers.popall(name, None)
    path, query = split_target(target)
    balancer = forwarder.balancer
    while True:
        # Counted in flight on its endpoint until the WebSocket closes (or this try fails).
        endpoint = balancer.take(route)
        try:
            up = await _open(forwarder, upstream_url(endpoint, path, query), headers, offered)
        except BaseException:
            balancer.release(endpoint)
            raise
        if up is not None:
            break
        balancer.release(endpoint)
        route = forwarder.refused(route, endpoint)
    ws = web.WebSocketResponse(
        protocols=(up.protocol,) if up.protocol else (), autoping=True, max_msg_size=0,
        heartbeat=None,
    )
    if extra:
        ws.headers.update(extra)
    try:
        await ws.prepare(request)
        await _pump_both_ways(ws, up)
    finally:
        balancer.release(endpoint)  # first: the closes below await, and may be cancelled
        await up.close()
        if ws.prepared and not ws.closed:
            await ws.close()
    return ws


async def _open(forwarder: Forwarder, url: URL, headers: CIMultiDict[str],
                offered: list[str]) -> aiohttp.ClientWebSocketResponse | None:
    """The upstream WebSocket at `url`; None if the connection was refused."""
    try:
        return await forwarder.session.ws_connect(
            url, headers=headers, protocols=offered, autoping=True, max_msg_size=0,
            timeout=aiohttp.ClientWSTimeout(ws_close=5.0), receive_timeout=None,
        )
    except aiohttp.WSServerHandshakeError as exc:
        raise UpstreamError(
            exc.status if exc.status >= 400 else 502, "websocket_refused",
            "The service refused the WebSocket upgrade.",
        ) from None
    except aiohttp.ClientConnectorError:
        return None
    except TimeoutError:
        settings = forwarder.settings
        raise UpstreamError.of(policy.timed_out(
            settings.connect_timeout, settings.read_timeout)) from None


async def _pump_both_ways(
    client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse
) -> None:
    async def copy(src: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
                   dst: web.WebSocketResponse | aiohttp.ClientWebSocketResponse) -> None:
        async for msg in src:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await dst.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await dst.send_bytes(msg.data)
            elif msg.type == aiohttp.WSMsgType.ERROR:
                break
        # src closed: close the other side with the same code.
        code = src.close_code or aiohttp.WSCloseCode.OK
        await dst.close(code=code)

    tasks = [asyncio.ensure_future(copy(client, upstream)),
             asyncio.ensure_future(copy(upstream, client))]
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await t
    finally:
        for t in tasks:
            t.cancel()
