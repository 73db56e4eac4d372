"""What a test client saw: one request to wakegate, its answer parsed."""

from __future__ import annotations

import contextlib
import json
import time
from typing import Any

import aiohttp


class Answer:
    """Status, headers, the body (parsed if it is JSON) and how long it took."""

    def __init__(self, status: int, headers: Any, body: Any, seconds: float) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.seconds = seconds

    @property
    def cold(self) -> bool:
        return self.headers.get("X-Wakegate-Cold-Start") == "true"

    def __repr__(self) -> str:
        return f"<{self.status} {dict(self.headers)!r} {self.body!r}>"


async def fetch(http: aiohttp.ClientSession, base: str, host: str, path: str = "/",
                **headers: str) -> Answer:
    """GET base+path with the given Host header."""
    started = time.monotonic()
    async with http.get(base + path, headers={"Host": host, **headers}) as r:
        text = await r.text()
        body: Any = text
        with contextlib.suppress(ValueError):
            body = json.loads(text)
        return Answer(r.status, r.headers, body, time.monotonic() - started)
