"""How the upstreams of this folder listen: run as `python SCRIPT --port PORT`, on loopback,
one handler call per connection, until they are killed."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve_from_command_line(handler: Handler, limit: int = 2**16) -> None:
    """Listen on 127.0.0.1 at the port of `--port`; `limit` bounds a readuntil (a head)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(_serve(handler, parser.parse_args().port, limit))


async def _serve(handler: Handler, port: int, limit: int) -> None:
    server = await asyncio.start_server(handler, "127.0.0.1", port, limit=limit)
    async with server:
        await server.serve_forever()
