"""The fast path's keep-alive connections to upstream endpoints, each reading with llhttp.

A connection belongs to one exchange at a time (its `owner`) or waits idle in
the pool. Its answers are parsed by httptools' response parser (llhttp): the
owner gets the head, the body as it arrives (chunked framing already
removed), and learns after each read whether the answer is complete. Bytes
the upstream sends beyond its answer, or while nobody asked, mean the
connection is confused: it is closed, never reused.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser

from .policy import Fields

MAX_IDLE_PER_ENDPOINT = 256


class Reader(Protocol):
    """What an exchange does with the answer its connection reads."""

    def response_head(self, status: int, reason: bytes, fields: Fields) -> None: ...
    def response_body(self, data: bytes) -> None: ...
    def response_read(self) -> None: ...
    def response_invalid(self) -> None: ...
    def upstream_lost(self) -> None: ...


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an endpoint and the parser of its answers."""

    def __init__(self, pool: UpstreamPool, endpoint: str) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.transport: asyncio.Transport | None = None
        self.owner: Reader | None = None
        self.closed = False
        self.complete = False  # the owner's answer has ended
        self.keep_alive = True  # llhttp's verdict on the last answer
        self._overrun = False  # bytes beyond an answer: never reused
        self._informational = False
        self._fields: list[tuple[bytes, bytes]] = []
        self._reason = b""
        self._parser = HttpResponseParser(self)

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self._overrun and not self.closed

    def no_reuse(self) -> None:
        """Close once this answer ends (a HEAD answer that announced a body)."""
        self._overrun = True

    def next_answer(self, fresh_parser: bool) -> None:
        """Ready for the next exchange; `fresh_parser` after an answer to HEAD, whose
        length the parser would otherwise wait for as a body."""
        self.complete = False
        if fresh_parser:
            self._parser = HttpResponseParser(self)

    def end_answer(self) -> None:
        """The owner takes the answer as complete (HEAD: the head is all of it)."""
        self.complete = True

    # --- llhttp's callbacks ---

    def on_message_begin(self) -> None:
        if self.complete:
            self._overrun = True
        self._fields = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:
            # 1xx: informational, the answer follows. (101, an upgrade nobody asked for,
            # gets here too: llhttp then stops with an error, a malformed answer.)
            self._informational = True
            return
        if self.owner is None or self.complete:
            self._overrun = True
            return
        self.keep_alive = self._parser.should_keep_alive()
        self.owner.response_head(status, self._reason, self._fields)

    def on_body(self, data: bytes) -> None:
        if self.owner is None or self.complete or self._informational:
            # Bytes beyond the answer; or a body on a 1xx (llhttp reads one for 1xx
            # other than 100-103), which must never reach the client ahead of the
            # real status line: the connection is not reused.
            self._overrun = True
            return
        self.owner.response_body(data)

    def on_message_complete(self) -> None:
        if self._informational:
            self._informational = False
        else:
            self.complete = True

    # --- the connection ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is None:
            self.close()  # bytes nobody asked for: never reuse this connection
            return
        try:
            self._parser.feed_data(data)
        except (HttpParserError, HttpParserUpgrade):
            self._overrun = True
            if not self.complete:
                owner.response_invalid()
                return
        owner.response_read()

    def eof_received(self) -> bool:
        self._gone()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()

    def _gone(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.pool.discard(self)
        if self.owner is not None:
            self.owner.upstream_lost()

    def close(self) -> None:
        self.closed = True
        self.owner = None
        self.pool.discard(self)
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections, per endpoint; a busy one belongs to its exchange."""

    def __init__(self, connect_timeout: float) -> None:
        self._idle: dict[str, list[UpstreamConnection]] = {}
        self._connect_timeout = connect_timeout

    def take(self, endpoint: str) -> UpstreamConnection | None:
        idle = self._idle.get(endpoint)
        while idle:
            up = idle.pop()
            if not up.closed and up.transport is not None and not up.transport.is_closing():
                return up
        return None

    async def connect(self, endpoint: str) -> UpstreamConnection:
        host, _, port = endpoint.rpartition(":")
        loop = asyncio.get_running_loop()
        _, up = await asyncio.wait_for(
            loop.create_connection(lambda: UpstreamConnection(self, endpoint),
                                   host.strip("[]"), int(port)),
            self._connect_timeout)
        return up

    def give_back(self, up: UpstreamConnection) -> None:
        idle = self._idle.setdefault(up.endpoint, [])
        if up.closed or len(idle) >= MAX_IDLE_PER_ENDPOINT:
            up.close()
        else:
            idle.append(up)

    def discard(self, up: UpstreamConnection) -> None:
        idle = self._idle.get(up.endpoint)
        if idle and up in idle:
            idle.remove(up)

    def close(self) -> None:
        for idle in self._idle.values():
            for up in list(idle):
                up.close()
        self._idle.clear()
