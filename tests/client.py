"""What a test client saw: one request to wakegate, its answer parsed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
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


class Seen:
    """Every answer of a load run: (monotonic send time, status, version or "")."""

    def __init__(self) -> None:
        self.answers: list[tuple[float, int, str]] = []
        self.switched_at = 0.0

    def failed(self) -> list[tuple[float, int, str]]:
        return [a for a in self.answers if a[1] != 200]

    def versions_after_switch(self) -> set[str]:
        return {v for sent, _, v in self.answers if sent > self.switched_at}


async def switch_under_load(base: str, host: str, switch: Callable[[], Any],
                            before: int = 1000, after: int = 1000, clients: int = 8) -> Seen:
    """`clients` concurrent clients send requests to `host` while `switch()` runs in a
    thread, after `before` answers; they stop `after` answers later."""
    seen = Seen()
    stop = asyncio.Event()
    reached = asyncio.Event()
    target = [before]

    async def client(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            sent = time.monotonic()
            a = await fetch(http, base, host)
            seen.answers.append((sent, a.status,
                                 a.body.get("version", "") if a.status == 200 else ""))
            if len(seen.answers) >= target[0]:
                reached.set()

    async with aiohttp.ClientSession() as http:
        running = [asyncio.ensure_future(client(http)) for _ in range(clients)]
        try:
            await asyncio.wait_for(reached.wait(), 60.0)
            await asyncio.to_thread(switch)
            seen.switched_at = time.monotonic()
            reached.clear()
            target[0] = len(seen.answers) + after
            await asyncio.wait_for(reached.wait(), 60.0)
        finally:
            stop.set()
            await asyncio.gather(*running, return_exceptions=True)
    return seen
