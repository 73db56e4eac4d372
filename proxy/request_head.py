"""The head of the request the fast path is reading, as llhttp (httptools) parses it.

One per client connection, reused for each of its requests (`next()`), so the
warm path allocates no parser per request. llhttp calls the `on_*` methods
while it is fed; the connection (fastpath.py) feeds it and reads the result.
"""

from __future__ import annotations

from httptools import HttpRequestParser


class RequestHead:
    __slots__ = ("fields", "keep_alive", "message_done", "method", "parser", "read",
                 "url", "version")

    def __init__(self) -> None:
        self.parser = HttpRequestParser(self)
        self.url = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.read = False  # llhttp has seen the end of the head
        self.message_done = False  # ... and of the body it declared
        self.keep_alive = True
        self.method = b""
        self.version = ""

    def next(self) -> None:
        """Ready for the next request's head (the parser goes on where it is)."""
        self.read = self.message_done = False
        self.url = b""
        self.fields = []

    # --- llhttp's callbacks ---

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))

    def on_headers_complete(self) -> None:
        self.read = True
        # Asked now: llhttp forgets them once the message is complete.
        parser = self.parser
        self.keep_alive = parser.should_keep_alive()
        self.method = parser.get_method()
        self.version = parser.get_http_version()

    def on_message_complete(self) -> None:
        self.message_done = True
