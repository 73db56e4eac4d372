"""A backend with a fixed capacity: at most C requests at a time, each taking D ms.

What the autoscale scenario (bench/autoscale.py) runs as its service. A real
service has a limit like this (a pool of C workers, each busy for the time a
request takes), so one replica serves at most C / D requests per second. Past
that, requests wait here for a free slot, as they would in a worker pool's
queue: the latency grows while the answers stay 200, until wakegate adds
replicas. Every request gets the same 13-byte body, with keep-alive.

    python -m bench.limited_backend --port {port} [--concurrency 4] [--service-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from bench.backend import BODY

_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: "
             + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)
_HEAD_LIMIT = 64 * 1024


def capacity(concurrency: int, service_s: float) -> float:
    """Requests per second one replica serves at most."""
    return concurrency / service_s


async def _connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      slots: asyncio.Semaphore, service_s: float) -> None:
    """Request after request on one connection; bodies are not expected (the bench GETs)."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError,
                             asyncio.LimitOverrunError):
        while await reader.readuntil(b"\r\n\r\n"):
            async with slots:
                await asyncio.sleep(service_s)
            writer.write(_RESPONSE)
            await writer.drain()
    writer.close()


async def serve(port: int, concurrency: int, service_s: float) -> None:
    slots = asyncio.Semaphore(concurrency)  # shared by every connection: the replica's limit
    server = await asyncio.start_server(
        lambda r, w: _connection(r, w, slots, service_s), "127.0.0.1", port, backlog=4096,
        limit=_HEAD_LIMIT)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=4, help="requests served at once")
    parser.add_argument("--service-ms", type=float, default=20.0, help="each request's time")
    args = parser.parse_args()
    import uvloop

    uvloop.run(serve(args.port, args.concurrency, args.service_ms / 1000))


if __name__ == "__main__":
    main()
