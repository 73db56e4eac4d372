"""Per-instance activity as this proxy sees it: requests in flight and when the last one ended.

The controller reads it (in process) or receives it in reports (split mode) to
decide when an instance is idle. Updating it is two integer operations on the
hot path; nothing here awaits or locks.
"""

from __future__ import annotations

import time


class InstanceActivity:
    __slots__ = ("in_flight", "last_end")

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_end = 0.0  # time.monotonic() of the last counted request's end


class ActivityTracker:
    def __init__(self) -> None:
        self.instances: dict[tuple[str, str], InstanceActivity] = {}

    def of(self, key: tuple[str, str]) -> InstanceActivity:
        act = self.instances.get(key)
        if act is None:
            act = self.instances[key] = InstanceActivity()
        return act

    def snapshot(self, key: tuple[str, str]) -> tuple[int, float]:
        """(requests in flight, monotonic time of the last end) for one instance."""
        act = self.instances.get(key)
        if act is None:
            return 0, 0.0
        # A request in flight is activity right now.
        return act.in_flight, (time.monotonic() if act.in_flight else act.last_end)
