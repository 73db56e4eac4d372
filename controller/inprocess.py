"""The proxy's link to a controller in the same process (`wakegate up`).

No reports and no drain: the scaler reads this proxy's counters directly, so
it sees a request the moment the proxy counts it. (Proxies in other processes
use proxy/remote_link.py and the API's /v1/routes, /v1/activate and
/v1/activity instead: controller/api/proxies.py.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .scaler import Scaler
from .spec import RouteTable


class ActivityCounters(Protocol):
    """The proxy's activity counters, as far as the controller reads them (proxy.activity)."""

    def snapshot(self, key: tuple[str, str]) -> tuple[int, float]:
        """(requests in flight, monotonic time of the last end) for one instance."""
        ...


class InProcessLink:
    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler

    async def start(
        self, apply_table: Callable[[RouteTable], None], activity: ActivityCounters
    ) -> None:
        # The controller reads this proxy's counters directly: no reports needed.
        self._scaler.add_activity_source(activity.snapshot)
        self._scaler.subscribe(apply_table)

    def activate(self, key: tuple[str, str]) -> None:
        self._scaler.request_activation(key)

    async def close(self) -> None:
        return None
