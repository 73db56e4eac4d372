"""Holding requests for sleeping instances until they are ready.

One hold per instance, however many requests wait: the first held request asks
the controller to activate and every other one awaits the same future, which
the next route table resolves the moment the instance has ready endpoints (or
fails it when the controller reports a failed activation). The queue is
bounded, each request has its own deadline, and a client that goes away is
removed at once (its handler is cancelled).
"""

from __future__ import annotations

import asyncio
import time

from controller.spec import SLEEPING, Route, RouteTable

from .link import ControlLink
from .metrics import ProxyMetrics


class ActivationFailed(Exception):
    pass


class RouteGone(Exception):
    pass


class QueueFull(Exception):
    pass


class HoldTimeout(Exception):
    pass


class _Hold:
    __slots__ = ("failures_seen", "future", "started", "timed_out", "waiting")

    def __init__(self) -> None:
        self.waiting = 0
        self.future: asyncio.Future[Route] | None = None
        self.started = 0.0
        self.failures_seen = 0
        self.timed_out = False


class Activator:
    def __init__(self, link: ControlLink, metrics: ProxyMetrics) -> None:
        self._link = link
        self._metrics = metrics
        self._holds: dict[tuple[str, str], _Hold] = {}

    def held_counts(self) -> dict[tuple[str, str], int]:
        return {key: h.waiting for key, h in self._holds.items()}

    async def wait_ready(self, route: Route, arrived: float) -> tuple[Route, float]:
        """Hold until the instance is ready; returns (ready route, seconds of cold start)."""
        key = route.key
        hold = self._holds.get(key)
        if hold is None:
            hold = self._holds[key] = _Hold()
        if hold.waiting >= route.hold_queue_size:
            raise QueueFull
        if hold.future is None or hold.future.done():
            hold.future = asyncio.get_running_loop().create_future()
            hold.started = arrived
            hold.failures_seen = route.failures
            hold.timed_out = False
            self._link.activate(key)
        future = hold.future
        hold.waiting += 1
        try:
            remaining = route.hold_timeout - (time.monotonic() - arrived)
            ready = await asyncio.wait_for(asyncio.shield(future), max(remaining, 0.0))
        except TimeoutError:
            if not hold.timed_out and not future.done():
                hold.timed_out = True
                self._metrics.of(key).cold_start_done("timeout", None)
            raise HoldTimeout from None
        finally:
            hold.waiting -= 1
            if not hold.waiting and _route_gone(future) and self._holds.get(key) is hold:
                del self._holds[key]  # its route left the table: no gauge for it any more
        return ready, time.monotonic() - hold.started

    def on_table(self, table: RouteTable) -> None:
        """Resolve or fail the holds that the new table decides (and forget the idle holds
        of routes that are gone)."""
        for key in [k for k, h in self._holds.items() if k not in table.by_key and not h.waiting]:
            del self._holds[key]
        for key, hold in self._holds.items():
            future = hold.future
            if future is None or future.done():
                continue
            route = table.by_key.get(key)
            if route is None:
                future.set_exception(RouteGone())
            elif route.endpoints:
                self._metrics.of(key).cold_start_done(
                    "success", time.monotonic() - hold.started
                )
                future.set_result(route)
            elif route.failures > hold.failures_seen:
                self._metrics.of(key).cold_start_done("failure", None)
                future.set_exception(ActivationFailed(route.error or "activation failed"))
            elif route.state == SLEEPING:
                # Put back to sleep while we wait (e.g. a crash just after
                # waking): ask again; activation is idempotent.
                self._link.activate(key)
            # Retrieve the exception so an abandoned future never logs
            # "exception was never retrieved".
            if future.done() and future.exception() is not None:
                pass


def _route_gone(future: asyncio.Future[Route]) -> bool:
    return future.done() and not future.cancelled() and \
        isinstance(future.exception(), RouteGone)
