"""A bare uvloop byte pipe: the floor of any Python proxy (no HTTP parsing at all).

Each client connection gets its own upstream connection to the backend; bytes
are copied both ways by asyncio Protocols, untouched. Backpressure both ways:
when one side's transport pauses writing (its buffer is full), the other side
stops reading until it drains. A half-close (EOF) is passed on; when either
side is lost, the other is closed once its buffer is written.

Usage: python -m bench.pipe --port P --upstream-port U [--host 127.0.0.1]
"""

from __future__ import annotations

import asyncio

from bench import reference

_connecting: set[asyncio.Task[None]] = set()


class _Side(asyncio.Protocol):
    """One end of the pipe; `peer` is the other end once both are connected."""

    transport: asyncio.Transport
    peer: _Side | None = None
    got_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.early: list[bytes] = []  # what arrives before the other end is connected

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def join(self, peer: _Side) -> None:
        self.peer = peer
        if self.early:
            peer.transport.write(b"".join(self.early))
            self.early.clear()
        if self.got_eof:
            peer.transport.write_eof()

    def eof_received(self) -> bool:
        self.got_eof = True
        peer = self.peer
        if peer is None:
            return True  # passed on when it is connected
        if peer.got_eof or not peer.transport.can_write_eof():
            return False  # closed now; connection_lost closes the peer
        peer.transport.write_eof()
        return True  # our writing half stays open until the peer ends too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None:
            self.peer.transport.close()  # after what is buffered is written

    # Our transport's buffer is full: the peer stops feeding it.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and not self.peer.transport.is_closing():
            self.peer.transport.resume_reading()


class Client(_Side):
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        task = asyncio.get_running_loop().create_task(self._connect())
        _connecting.add(task)  # held until done: the loop keeps only a weak reference
        task.add_done_callback(_connecting.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(_Side, *self.upstream)
        except OSError:
            self.transport.abort()
            return
        if self.transport.is_closing():
            up.transport.close()
            return
        up.join(self)
        self.join(up)


def main() -> None:
    reference.main(__doc__.split("\n")[0], lambda upstream: lambda: Client(upstream))


if __name__ == "__main__":
    main()
