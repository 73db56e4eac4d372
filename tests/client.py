"""What a test client saw: requests to wakegate's proxy through aiohttp, their answers parsed.

The one place a test GETs a service through a proxy: by Host (`fetch`), by service and
environment (`get`, `get_once`), a release's version (`version_of`), and the load
patterns several tests share (`paced`, `switch_under_load`, `bursts_across_sleep`).
Tests that care about the bytes on the wire use tests/raw_client.py instead."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, Protocol

import aiohttp


class Answer:
    """Status, headers, the body (parsed if it is JSON) and how long it took."""

    def __init__(self, status: int, headers: Any, body: Any, seconds: float,
                 text: str = "") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.seconds = seconds
        self.text = text  # the body as it came, before any JSON parsing

    def __iter__(self) -> Iterator[Any]:
        """`status, body, headers = answer`: the three most tests look at."""
        return iter((self.status, self.body, self.headers))

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
        return Answer(r.status, r.headers, body, time.monotonic() - started, text)


class Serving(Protocol):
    """What requests go through: a Wakegate, a ProxyProcess (anything with a base URL)."""

    @property
    def base(self) -> str: ...


def host(service: str, environment: str) -> str:
    """The Host that routes to `service` in `environment`."""
    return f"{service}.{environment}.localhost"


async def get(http: aiohttp.ClientSession, server: Serving, service: str, environment: str,
              path: str = "/", **headers: str) -> Answer:
    """GET `path` of `service` in `environment` through `server`."""
    return await fetch(http, server.base, host(service, environment), path, **headers)


async def get_once(server: Serving, service: str, environment: str, path: str = "/",
                   timeout: float = 30.0, **headers: str) -> Answer:
    """get() on a session (and so a connection) of its own."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http:
        return await get(http, server, service, environment, path, **headers)


async def version_of(server: Serving, environment: str, service: str = "hello",
                     **headers: str) -> str:
    """The version the instance of `environment` answers with (a 200 expected)."""
    a = await get_once(server, service, environment, **headers)
    assert a.status == 200, a
    return str(a.body["version"])


async def paced(send: Callable[[], Awaitable[Answer]], seconds: float = 1.5,
                every: float = 0.1) -> AsyncIterator[Answer]:
    """`send()` every `every` s for `seconds` (traffic at its own pace, each request after
    the last one ended), each answer as it comes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.sleep(every)
        yield await send()


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


# Gaps (s) after a request ended at which a burst is aimed, for an idle_timeout of 200 ms:
# coarse steps before and after the moment the instance goes to sleep, fine ones across it.
BURST_GAPS = (0.15, 0.18, *(0.19 + 0.005 * i for i in range(13)), 0.28, 0.35)


class Bursts:
    """What bursts_across_sleep saw."""

    def __init__(self) -> None:
        self.errors: list[tuple[float, str]] = []  # (gap, what came back) of each failure
        self.caught_asleep = 0  # bursts that met a sleeping instance (a cold start)


async def bursts_across_sleep(send: Callable[[int], Awaitable[Answer]],
                              burst: int = 50) -> Bursts:
    """For each of BURST_GAPS: one request (`send(n)`, n the gap's index), then `burst`
    requests spread over 40 ms around the gap after it ended (`send(i)`, i the request's
    index in the burst): aimed before, at and after the moment the instance sleeps."""
    seen = Bursts()

    async def one(at: float, i: int) -> Answer | BaseException:
        await asyncio.sleep(max(at - time.monotonic(), 0))
        try:
            return await send(i)
        except (aiohttp.ClientError, TimeoutError) as exc:
            return exc

    for n, gap in enumerate(BURST_GAPS):
        first = await send(n)
        assert first.status == 200, first
        ended = time.monotonic()
        times = [ended + gap - 0.02 + 0.04 * i / burst for i in range(burst)]
        answers = await asyncio.gather(*(one(t, i) for i, t in enumerate(times)))
        seen.errors.extend(
            (gap, repr(a) if not isinstance(a, Answer) else f"{a.status} {a.body}")
            for a in answers if not isinstance(a, Answer) or a.status != 200
        )
        if any(isinstance(a, Answer) and a.cold for a in answers):
            seen.caught_asleep += 1
    return seen
