"""The route table as proxies in other processes get it: numbered, watched, drained.

The drain overlay lives here and nowhere else. In split mode (and for the
workers of `up --workers N`) an instance being drained (activity_reports.py)
is sent as `stopping` without endpoints, so that those proxies hold its
requests while the controller makes sure it is idle. A proxy in the
controller's own process needs no overlay: it takes the scaler's table as it
is (inprocess.py), and the scaler sees its requests the moment it counts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import Collection, Iterable

from ..scaler import Scaler
from ..spec import READY, STOPPING, RouteTable, routes_to_wire

Key = tuple[str, str]


def drained_wire(table: RouteTable, draining: Collection[Key]) -> list[dict[str, object]]:
    """The table on the wire, with every instance in `draining` stopping and without endpoints."""
    routes = routes_to_wire(table)
    for wire in routes:
        if (wire["environment"], wire["service"]) in draining:
            wire["state"], wire["endpoints"] = STOPPING, []
    return routes


class RouteFeed:
    """Versions count from 1 in every controller process; `epoch` (random, new at every start)
    tells a proxy that a restarted controller's version 1 is newer than the version 900 it had.
    """

    def __init__(self, scaler: Scaler) -> None:
        self.epoch = secrets.token_hex(8)
        self.version = 0
        self._table: RouteTable | None = None
        self._draining: dict[Key, int] = {}  # → the version that first drained it
        self._routes_json = b"[]"
        self._changed = asyncio.Event()
        self._closed = False
        scaler.subscribe(self._on_table)

    def _on_table(self, table: RouteTable) -> None:
        self._table = table
        for key in list(self._draining):
            route = table.by_key.get(key)
            if route is None or route.state != READY:
                del self._draining[key]  # asleep, going to sleep or gone: nothing to drain
        self._bump()

    def _bump(self) -> None:
        assert self._table is not None
        self.version += 1
        # Encoded once per version, however many proxies fetch it.
        self._routes_json = json.dumps(drained_wire(self._table, self._draining),
                                       separators=(",", ":")).encode()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # --- drains (activity_reports.Drains) ---

    def drain(self, key: Key) -> tuple[str, int] | None:
        if key not in self._draining:
            route = self._table.by_key.get(key) if self._table else None
            if route is None or route.state != READY:
                return None
            self._draining[key] = self.version + 1
            self._bump()
        return self.epoch, self._draining[key]

    def undrain(self, key: Key) -> None:
        if self._draining.pop(key, None) is not None:
            self._bump()

    def draining(self) -> Iterable[Key]:
        return self._draining.keys()

    # --- the watch ---

    def current(self, epoch: str, version: int) -> bool:
        return epoch == self.epoch and version == self.version

    async def changed(self, timeout: float) -> None:
        """Return when the next version is out, after `timeout` seconds, or at close."""
        if self._closed:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def body(self) -> bytes:
        # `now` lets the proxy move backoff_until into its own monotonic clock.
        head = json.dumps({"epoch": self.epoch, "version": self.version,
                           "now": time.monotonic()})
        return head[:-1].encode() + b',"routes":' + self._routes_json + b"}"

    def close(self) -> None:
        """Answer every open watch now, so that shutting down does not wait for them."""
        self._closed = True
        self._changed.set()
