"""The proxy's link to a controller in the same process (`wakegate up`).

No reports and no drain: the scaler reads this proxy's counters directly, so
it sees a request the moment the proxy counts it. (Proxies in other processes
use proxy/remote_link.py and controller/api.py's /v1/routes, /v1/activate and
/v1/activity instead.)
"""

from __future__ import annotations

from collections.abc import Callable

from proxy.activity import ActivityTracker

from .scaler import Scaler
from .spec import RouteTable


class InProcessLink:
    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler

    async def start(
        self, apply_table: Callable[[RouteTable], None], activity: ActivityTracker
    ) -> None:
        # The controller reads this proxy's counters directly: no reports needed.
        self._scaler.add_activity_source(activity.snapshot)
        self._scaler.subscribe(apply_table)

    def activate(self, key: tuple[str, str]) -> None:
        self._scaler.request_activation(key)

    async def close(self) -> None:
        return None
