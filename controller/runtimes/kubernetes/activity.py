"""Last activity, persisted on the Deployment: `wakegate.dev/last-activity`.

Written every few seconds while an instance runs (and at once when it is
woken), so that a restarted controller, or the next leader, neither puts a
busy service to sleep nor forgets an idle one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from ...model import Key
from ..base import RuntimeEvents
from .client import KubeError, format_micro_time
from .discovery import ACTIVITY_ANNOTATION, Placement
from .scale import DeploymentWriter

log = logging.getLogger("wakegate.kubernetes")


class ActivityRecorder:
    def __init__(self, writer: DeploymentWriter, placements: Callable[[], Mapping[Key, Placement]],
                 interval: float) -> None:
        self._writer = writer
        self._placements = placements
        self._interval = interval
        self._persisted: dict[Key, float] = {}

    async def record(self, key: Key, wall: float) -> None:
        """Write `wall` (Unix time) as the instance's last activity; a failure is retried by
        `run`."""
        placement = self._placements().get(key)
        if placement is None:
            return
        try:
            await self._writer.annotate(placement, {ACTIVITY_ANNOTATION: format_micro_time(wall)})
            self._persisted[key] = wall
        except KubeError as exc:
            log.warning("could not record the activity of %s/%s: %s", key[0], key[1], exc)

    async def run(self, events: RuntimeEvents) -> None:
        """Every interval: each running instance's activity, when it moved by an interval."""
        interval = self._interval
        while True:
            await asyncio.sleep(interval)
            now_mono, now_wall = time.monotonic(), time.time()
            for key in list(self._placements()):
                try:
                    activity = events.running_activity(key)
                    if activity is None:
                        continue
                    in_flight, last = activity
                    wall = now_wall if in_flight else now_wall - (now_mono - last)
                    if abs(wall - self._persisted.get(key, 0.0)) >= interval:
                        await self.record(key, wall)
                except Exception as exc:  # never let one instance stop the writer
                    log.warning("could not record the activity of %s/%s: %s", key[0], key[1],
                                exc)
