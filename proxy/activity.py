"""Per-instance activity as this proxy sees it: requests in flight and when the last one ended.

The controller reads it (in process) or receives it in reports (split mode) to
decide when an instance is idle. Updating it is two integer operations on the
hot path; nothing here awaits or locks.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from controller.spec import key_id


class InstanceActivity:
    __slots__ = ("in_flight", "last_end")

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_end = 0.0  # time.monotonic() of the last counted request's end


MAX_KEYS = 4096  # keys whose last use is remembered (the oldest is forgotten first)


class ActivityTracker:
    def __init__(self) -> None:
        self.instances: dict[tuple[str, str], InstanceActivity] = {}
        # API key id → monotonic time it was last accepted, for `wakegate keys list`.
        self.keys: dict[str, float] = {}

    def key_used(self, digest: bytes | None) -> None:
        if digest is None:
            return
        ident = key_id(digest)
        self.keys.pop(ident, None)  # re-inserted last: the dict stays in order of use
        self.keys[ident] = time.monotonic()
        if len(self.keys) > MAX_KEYS:
            del self.keys[next(iter(self.keys))]

    def key_uses(self) -> dict[str, float]:
        """Key id → Unix time it was last accepted."""
        offset = time.time() - time.monotonic()
        return {ident: at + offset for ident, at in self.keys.items()}

    def of(self, key: tuple[str, str]) -> InstanceActivity:
        act = self.instances.get(key)
        if act is None:
            act = self.instances[key] = InstanceActivity()
        return act

    def forget_all_but(self, keys: Collection[tuple[str, str]]) -> None:
        """Only these instances, and any with a request still in flight: one that left the
        route table is not counted (nor shown in /metrics) for ever."""
        for key in [k for k, act in self.instances.items()
                    if k not in keys and not act.in_flight]:
            del self.instances[key]

    def snapshot(self, key: tuple[str, str]) -> tuple[int, float]:
        """(requests in flight, monotonic time of the last end) for one instance."""
        act = self.instances.get(key)
        if act is None:
            return 0, 0.0
        # A request in flight is activity right now.
        return act.in_flight, (time.monotonic() if act.in_flight else act.last_end)
