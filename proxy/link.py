"""The one small interface between a proxy and the controller.

Two implementations: in process (`wakegate up`, see controller/inprocess.py)
and over HTTP for separate processes. The proxy only ever calls these.
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
        """Ask the controller to wake an instance; returns at once, safe to repeat."""

    async def close(self) -> None: ...
