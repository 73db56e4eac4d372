"""A level-triggered control loop, as the fake's controllers and kubelet both run one.

wake() asks for one more pass of step(); wakes that arrive while a pass runs
coalesce into a single next pass, and a failing pass is logged, not fatal (the
next wake comes back to whatever it left).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("tests.kube")


class ControlLoop:
    def __init__(self, name: str) -> None:
        self.name = name
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def step(self) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name=self.name)
        self.wake()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.step()
            except Exception:
                log.exception("%s: a pass failed", self.name)
