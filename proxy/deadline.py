"""A deadline that moves with every request, kept with one timer per connection.

A client connection's deadline (its head must be whole by then, or it has
idled too long) moves at every request. Creating and cancelling a timer each
time would cost the warm path more than the check itself; so the deadline is
a number, and the one timer, when it fires before the deadline now in force,
re-arms itself for it (as aiohttp's own keep-alive timer does). Moving the
deadline earlier than the timer is the only move that re-arms at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Deadline:
    __slots__ = ("_due", "_handle", "_on_due", "at")

    def __init__(self, on_due: Callable[[], None]) -> None:
        self.at = 0.0  # the deadline in force (monotonic); 0: none
        self._due = 0.0  # when the timer fires
        self._handle: asyncio.TimerHandle | None = None
        self._on_due = on_due  # called once `at` has passed

    def set(self, at: float) -> None:
        self.at = at
        if self._handle is None or at < self._due:
            if self._handle is not None:
                self._handle.cancel()
            self._due = at
            self._handle = asyncio.get_running_loop().call_later(
                max(at - time.monotonic(), 0.0), self._fire)

    def clear(self) -> None:
        """No deadline for now: a timer still armed finds none and stops."""
        self.at = 0.0

    def cancel(self) -> None:
        self.at = 0.0
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        if not self.at:
            return
        if time.monotonic() < self.at:
            self.set(self.at)  # armed for an earlier deadline that has moved on since
            return
        self._on_due()
