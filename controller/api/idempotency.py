"""Idempotency keys: a command repeated after a timeout gets the first one's answer.

A client (the CLI does) sends `Idempotency-Key: <random>` with a change
(deploy, promote, release promote/rollback). The first request with a key
runs the change in a task of its own, so that a client that gives up does
not cancel it; a repeat with the same key (same path) waits for that task
and gets exactly its answer, instead of running the change again - a promote
retried after a timeout answers "promoted", not "nothing to promote"; the same
key with another body is refused (422), as payment APIs do. Answers
are kept for 10 minutes, at most 1,024 of them; a controller restart forgets
them (the commands' own rules still make a repeat safe).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from aiohttp import web

KEEP_SECONDS = 600.0
KEEP_AT_MOST = 1024
MAX_KEY_LENGTH = 128

Answer = tuple[int, bytes]


class IdempotentAnswers:
    def __init__(self) -> None:
        # (path, key) → (when, the body's digest, the answer)
        self._answers: OrderedDict[tuple[str, str],
                                   tuple[float, bytes, asyncio.Future[Answer]]] = OrderedDict()

    async def answer(self, request: web.Request,
                     run: Callable[[], Awaitable[web.Response]]) -> web.Response:
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return await run()
        if not 0 < len(key) <= MAX_KEY_LENGTH or not key.isprintable():
            return web.json_response(
                {"error": "bad_request", "message": "Idempotency-Key must be 1 to "
                 f"{MAX_KEY_LENGTH} printable characters, e.g. a UUID."}, status=400)
        self._expire()
        slot = (request.path, key)
        # The key names one request: the same key with another body is a client's
        # mistake, never the first answer (which would say something else was done).
        digest = hashlib.sha256(await request.read()).digest()
        entry = self._answers.get(slot)
        if entry is None:
            future = asyncio.ensure_future(self._run(run))
            self._answers[slot] = (time.monotonic(), digest, future)
        elif entry[1] != digest:
            return web.json_response(
                {"error": "idempotency_key_reused", "message": "This Idempotency-Key was used "
                 "with another request body; use a new key for each change."}, status=422)
        else:
            future = entry[2]
        status, body = await asyncio.shield(future)
        return web.Response(status=status, body=body, content_type="application/json")

    @staticmethod
    async def _run(run: Callable[[], Awaitable[web.Response]]) -> Answer:
        response = await run()
        body = response.body if isinstance(response.body, bytes) else b""
        return response.status, body

    def _expire(self) -> None:
        now = time.monotonic()
        while self._answers:
            slot, (stored, _, future) = next(iter(self._answers.items()))
            if len(self._answers) <= KEEP_AT_MOST and (now - stored < KEEP_SECONDS
                                                       or not future.done()):
                break
            del self._answers[slot]
