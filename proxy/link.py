"""The one small interface between a proxy and the controller.

Two implementations: in process (`wakegate up`, see controller/inprocess.py)
and over HTTP for separate processes (`wakegate proxy`, see remote_link.py).
The proxy only ever calls these, and never from the hot path except
`activate`, which must return at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from controller.spec import RouteTable

from .activity import ActivityTracker


class ControlLink(Protocol):
    async def start(
        self, apply_table: Callable[[RouteTable], None], activity: ActivityTracker
    ) -> None:
        """Begin delivering route tables to `apply_table` and reading/reporting activity."""

    def activate(self, key: tuple[str, str]) -> None:
        """Ask the controller to wake an instance; returns at once, safe to repeat.

        The activator asks once per hold, and again whenever a table shows the
        instance asleep while requests are held (e.g. a restarted controller).
        """

    async def close(self) -> None:
        """Stop talking to the controller (the HTTP link says goodbye in a last report)."""
