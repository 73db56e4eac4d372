"""When to sleep: the idle watch, and putting an idle instance to sleep.

An instance sleeps once no proxy has a request in flight for it and none
ended within its idle timeout. The switch is careful: first the route says
`stopping` (proxies hold new requests from then on), then activity is read
again; a request that slipped in before the switch keeps it awake. Only then
are its replicas stopped. A held request wakes it again once the stop is
done (the scaler's activation waits for the instance's lock). A service
others depend on (`depends_on`) is not idle while one of them is awake: it
sleeps after the last of them, from their latest activity and its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .dependencies import dependents, dependents_index
from .events import event
from .model import READY, SLEEPING, STOPPING, ActivitySource, Instance, Key, Replica

log = logging.getLogger("wakegate.controller")

MAX_IDLE_CHECK = 1.0  # seconds between idle checks when nothing is due sooner

StopReplicas = Callable[[list[Replica], float], Any]  # the runtime's stop (awaitable)


class Activity:
    """How busy an instance is, summed over every proxy that counts it (the sources)."""

    def __init__(self) -> None:
        self._sources: list[ActivitySource] = []

    def add_source(self, source: ActivitySource) -> None:
        self._sources.append(source)

    def __call__(self, inst: Instance) -> tuple[int, float]:
        """(requests in flight on all proxies, monotonic time the instance was last active)."""
        in_flight = 0
        last = max(inst.activity_floor, inst.ready_since)
        for source in self._sources:
            n, end = source(inst.key)
            in_flight += n
            last = max(last, end)
        return in_flight, last


class Sleeper:
    """Watches the instances that may sleep and puts each to sleep when it is idle."""

    def __init__(self, instances: Mapping[Key, Instance], activity: Activity,
                 publish: Callable[[], None], stop: StopReplicas,
                 on_scale: Callable[[Instance, str], None]) -> None:
        self._instances = instances
        self._activity = activity
        self._publish = publish
        self._stop = stop
        self._on_scale = on_scale
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._loop = asyncio.ensure_future(self._watch())

    def poke(self) -> None:
        """Something changed (a publish): look again now, not at the next check."""
        self._wakeup.set()

    def close(self) -> list[asyncio.Task[None]]:
        """Stop watching, at once: the tasks cancelled, for the caller to await."""
        self._closing = True
        self._wakeup.set()
        tasks = [*self._tasks, *([self._loop] if self._loop is not None else [])]
        for task in tasks:
            task.cancel()
        return tasks

    async def _watch(self) -> None:
        while not self._closing:
            now = time.monotonic()
            next_check = now + MAX_IDLE_CHECK
            index = dependents_index(self._instances)
            for inst in self._instances.values():
                env = inst.spec.environment
                if inst.state != READY or not env.sleeps or inst.lock.locked():
                    continue
                assert env.idle_timeout is not None
                busy, last = self._usage(inst, index)
                if busy:
                    next_check = min(next_check, now + env.idle_timeout)
                    continue
                due = last + env.idle_timeout
                if due <= now:
                    task = asyncio.ensure_future(self._put_to_sleep(inst))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    next_check = min(next_check, due)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(next_check - now, 0.001))

    def _usage(self, inst: Instance, index: Mapping[Key, list[Instance]] | None = None
               ) -> tuple[bool, float]:
        """(whether it must stay awake now, when its idle clock started).

        A dependency (`depends_on`) counts its dependents in: it stays awake
        while any of them is awake, and is idle only from the latest activity
        of itself and of them.
        """
        in_flight, last = self._activity(inst)
        busy = in_flight > 0
        for dependent in dependents(self._instances, inst.key, index):
            busy = busy or dependent.state != SLEEPING
            last = max(last, self._activity(dependent)[1])
        return busy, last

    async def _put_to_sleep(self, inst: Instance) -> None:
        async with inst.lock:
            idle_timeout = inst.spec.environment.idle_timeout
            if inst.state != READY or idle_timeout is None or self._closing:
                return
            busy, last = self._usage(inst)
            if busy or time.monotonic() - last < idle_timeout:
                return
            # From here on, proxies hold new requests instead of forwarding them.
            inst.state = STOPPING
            self._publish()
            # A request that got the endpoints before the switch is in flight
            # now; one that ended in between moved `last`; a dependent may have
            # woken. Any of them keeps it awake.
            busy, last_again = self._usage(inst)
            if busy or last_again != last:
                inst.state = READY
                self._publish()
                return
            replicas, inst.replicas = inst.replicas, []
            idle_for = time.monotonic() - last
            try:
                await self._stop(replicas, inst.spec.service.stop_grace)
            except Exception as exc:
                # Nothing was stopped (Kubernetes: the scale-down failed): it serves on.
                inst.replicas = [*replicas, *inst.replicas]
                inst.state = READY
                self._publish()
                log.error("%s could not be put to sleep: %s", inst.name, exc)
                return
            if inst.replicas:
                # Replicas someone else started meanwhile (Kubernetes): they serve.
                inst.state = READY
                inst.ready_since = time.monotonic()
                self._publish()
                return
            inst.fell_asleep()
            inst.failures_in_a_row = 0  # it ran until it was idle: a good start
            self._publish()
            self._on_scale(inst, "down")
            log.info("%s is asleep after %.1f s idle", inst.name, idle_for,
                     extra=event(inst.spec, "slept", idle_seconds=round(idle_for, 1)))
