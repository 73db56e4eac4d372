"""Capped exponential back-off: the one rule every retry loop in both planes follows.

A loop that retries something failing (a watch on the API server, a link to the
controller, a worker that keeps crashing) waits `first` seconds, then twice as
long each time, never more than `cap`, and starts over with `reset()` once the
thing works again. With jitter ("equal jitter": half the delay fixed, half
random) many clients that failed together do not all come back at the same
instant; a supervisor restarting its own child does not need it.
"""

from __future__ import annotations

import random


class Backoff:
    """The delays of one retry loop: `next()` before each retry, `reset()` after a success."""

    def __init__(self, first: float, cap: float, *, jitter: bool = True) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"back-off needs 0 < first <= cap, got {first} and {cap}")
        self.first = first
        self.cap = cap
        self.jitter = jitter
        self._delay = first

    def next(self) -> float:
        """Seconds to wait before this retry; the one after waits twice as long (up to the cap)."""
        delay = self._delay
        self._delay = min(delay * 2, self.cap)
        if self.jitter:
            return delay / 2 + random.uniform(0, delay / 2)
        return delay

    def reset(self) -> None:
        """It worked: the next failure waits `first` again."""
        self._delay = self.first

