"""The command line and server loop the bench's reference proxies share (pipe.py,
httptools_proxy.py): `--port P --upstream-port U [--host H] [--upstream-host H]`."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import uvloop

Upstream = tuple[str, int]


async def _serve(host: str, port: int, factory: Callable[[], asyncio.Protocol]) -> None:
    server = await asyncio.get_running_loop().create_server(factory, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def main(description: str,
         protocol_for: Callable[[Upstream], Callable[[], asyncio.Protocol]]) -> None:
    """Parse the command line, then serve client connections with the protocols
    `protocol_for(upstream)` makes, on uvloop, until killed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    factory = protocol_for((args.upstream_host, args.upstream_port))
    uvloop.run(_serve(args.host, args.port, factory))
