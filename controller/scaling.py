"""Scaling by load: more replicas while an instance is busy, fewer once it is not.

Beside sleep.py (which takes an idle instance from its replicas to none),
this takes a running instance between `min_replicas` (at least 1) and
`max_replicas`; it never wakes or sleeps one. It keeps one decider
(autoscale.py) per running instance whose environment may have more than one
replica (private and demo never: their max is 1), feeds it the instance's
concurrency every tick and does what it decides:

- a step up starts `desired - ready` replicas at once; the ones that serve
  keep serving, and the new ones join the route table only once ready;
- a step down takes one replica out of the route table (publish: from then on
  no proxy sends it a new request), waits the environment's drain time
  (`scale_down_delay`, the time blue/green gives the old colour: requests
  that had already picked it, and WebSockets, finish on it), then stops it
  with the service's `stop_grace` (SIGTERM: a service that stops gracefully
  finishes what is still in flight). The next step down waits for that drain.

An instance that is waking, going to sleep, being deployed or released is
left alone until that is over (its lock, or its release's lock, is held).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from .autoscale import Autoscaler, Decision
from .events import event
from .model import READY, STOPPING, Instance, Key, Replica
from .runtimes.base import Runtime
from .sleep import Activity
from .spec import Autoscale

log = logging.getLogger("wakegate.controller")

MAX_TICK = 1.0  # seconds between two looks at the load, at most
MIN_TICK = 0.02  # ... and at least (a panic window of a few hundred ms in tests)
TICKS_PER_PANIC_WINDOW = 6  # so that a panic is seen within a sixth of its window
# After a step up that failed to start, no other step up for this long: a service
# that cannot start is not started again every tick.
PAUSE_AFTER_FAILED_START = 5.0


def autoscaled(inst: Instance) -> bool:
    """May this instance have more than one replica by load? (private, demo: never)."""
    return inst.spec.environment.max_replicas > 1


class LoadScaler:
    """Watches the running instances' load and adds or removes replicas (see the module)."""

    def __init__(self, instances: Mapping[Key, Instance], activity: Activity,
                 publish: Callable[[], None], runtime: Runtime,
                 on_scale: Callable[[Instance, str], None]) -> None:
        self._instances = instances
        self._activity = activity
        self._publish = publish
        self._runtime = runtime
        self._on_scale = on_scale
        self._deciders: dict[Key, tuple[Autoscaler, Autoscale]] = {}
        self._steps: dict[Key, asyncio.Task[None]] = {}  # a step up or down under way
        self._drains: dict[Key, asyncio.Task[None]] = {}  # a replica going, out of the routes
        self._paused_until: dict[Key, float] = {}  # monotonic: a failed start
        self._loop: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._loop = asyncio.ensure_future(self._watch())

    def close(self) -> list[asyncio.Task[Any]]:
        """Stop watching, at once: the tasks cancelled, for the caller to await."""
        self._closing = True
        tasks = [*self._steps.values(), *self._drains.values(),
                 *([self._loop] if self._loop is not None else [])]
        for task in tasks:
            task.cancel()
        return tasks

    # --- the watch ---

    async def _watch(self) -> None:
        while not self._closing:
            try:
                self.tick(time.monotonic())
            except Exception:  # one bad tick must not end scaling for good
                log.exception("scaling by load: a tick failed")
            await asyncio.sleep(self._interval())

    def _interval(self) -> float:
        shortest = min((d[1].panic_window for d in self._deciders.values()), default=MAX_TICK)
        return max(MIN_TICK, min(MAX_TICK, shortest / TICKS_PER_PANIC_WINDOW))

    def tick(self, now: float) -> None:
        """One sample of every running instance's load, and a step where one is due."""
        for key in [k for k in self._deciders if k not in self._instances]:
            del self._deciders[key]
        for inst in self._instances.values():
            try:
                self._tick_one(inst, now)
            except Exception:  # one instance's trouble must not stop the others' scaling
                log.exception("%s: scaling by load: a tick failed", inst.name)

    def _tick_one(self, inst: Instance, now: float) -> None:
        decider = self._decider(inst)
        if decider is None:
            return
        in_flight, _ = self._activity(inst)
        decider.observe(now, in_flight)
        if inst.state != READY:
            return  # going to sleep: sleep.py's
        env = inst.spec.environment
        ready = len(inst.live_replicas())
        decision = decider.decide(now, ready, max(env.min_replicas, 1), env.max_replicas)
        inst.desired_replicas = decision.desired
        inst.concurrency = decision.stable_concurrency
        if not self._may_step(inst):
            return
        if decision.desired > ready and now >= self._paused_until.get(inst.key, 0.0):
            if ready + self._draining(inst) < env.max_replicas:
                self._step(inst, self._scale_up(inst, decision))
        elif decision.desired < ready and inst.key not in self._drains:
            self._step(inst, self._scale_down(inst))

    def _draining(self, inst: Instance) -> int:
        """Replicas out of the routes but still running (at most one: one step at a time);
        they count against max_replicas until they are stopped."""
        return 1 if inst.key in self._drains else 0

    def _decider(self, inst: Instance) -> Autoscaler | None:
        """The instance's decider while it runs and may scale; made, reconfigured or dropped."""
        key = inst.key
        elsewhere = self._runtime.autoscaled_elsewhere(inst.spec)
        if not autoscaled(inst) or inst.state not in (READY, STOPPING) or elsewhere:
            # Asleep, waking (a fresh start: a fresh history), never more than one, or
            # scaled by something else (Kubernetes: an HPA on its Deployment), whose
            # count is the one wanted as far as can be seen here.
            self._deciders.pop(key, None)
            inst.concurrency = None
            inst.desired_replicas = len(inst.live_replicas()) if elsewhere else 0
            return None
        settings = inst.spec.autoscale
        held = self._deciders.get(key)
        if held is None:
            held = self._deciders[key] = (Autoscaler(settings), settings)
        elif held[1] != settings:  # an applied config
            held[0].reconfigure(settings)
            held = self._deciders[key] = (held[0], settings)
        return held[0]

    def _may_step(self, inst: Instance) -> bool:
        """Nothing else is changing its replicas: no step, wake, sleep, deploy or release."""
        release = inst.release
        return not (self._closing or inst.key in self._steps or inst.lock.locked()
                    or (release is not None and release.lock.locked()))

    def _step(self, inst: Instance, step: Any) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(step)
        self._steps[inst.key] = task
        task.add_done_callback(lambda _: self._steps.pop(inst.key, None))

    # --- the steps ---

    async def _scale_up(self, inst: Instance, decision: Decision) -> None:
        async with inst.lock:
            if inst.state != READY or self._closing:
                return
            env = inst.spec.environment
            ready = len(inst.live_replicas())
            count = min(decision.desired, env.max_replicas - self._draining(inst)) - ready
            if count <= 0:
                return
            started = time.monotonic()
            try:
                new = await self._runtime.start(inst.spec, inst.version, count)
            except Exception as exc:  # StartFailed, or the platform's own failure
                self._paused_until[inst.key] = time.monotonic() + PAUSE_AFTER_FAILED_START
                log.warning("%s: %d more replica%s did not start: %s; %d serve on",
                            inst.name, count, "" if count == 1 else "s", exc, ready,
                            extra=event(inst.spec, "scale_up_failed", error=str(exc)))
                return
            if not new:
                return  # the platform had no room for more (e.g. a pod still going)
            if inst.state != READY:
                # Every replica it had died meanwhile: waking it again is the scaler's.
                await self._runtime.stop(new, inst.spec.service.stop_grace)
                return
            inst.replicas.extend(r for r in new if not r.exited.done() and r not in inst.replicas)
            self._publish()  # the new ones get traffic from this table on
            self._on_scale(inst, "up")
            replicas, panic = len(inst.live_replicas()), decision.panic
            # The figures it was decided on: the stable average then, and whether in panic.
            log.info("%s: scaled up to %d replicas (concurrency %.2f%s) in %.0f ms", inst.name,
                     replicas, decision.stable_concurrency, ", panic" if panic else "",
                     (time.monotonic() - started) * 1000,
                     extra=event(inst.spec, "scaled_up", replicas=replicas, panic=panic,
                                 concurrency=round(decision.stable_concurrency, 2)))

    async def _scale_down(self, inst: Instance) -> None:
        async with inst.lock:
            replicas = inst.live_replicas()
            floor = max(inst.spec.environment.min_replicas, 1)
            if inst.state != READY or self._closing or len(replicas) <= floor:
                return
            going = replicas[-1]  # the newest
            inst.replicas.remove(going)
            self._publish()  # out of the route table: no proxy picks it from now on
            self._on_scale(inst, "down")
            concurrency = inst.concurrency or 0.0
            log.info("%s: scaling down to %d replicas (concurrency %.2f): %s drains",
                     inst.name, len(replicas) - 1, concurrency, going.endpoint,
                     extra=event(inst.spec, "scaled_down", replicas=len(replicas) - 1,
                                 concurrency=round(concurrency, 2)))
        # Outside the lock: a deploy, a sleep or a step up need not wait for the drain.
        task = asyncio.ensure_future(self._drain_and_stop(inst, going))
        self._drains[inst.key] = task
        task.add_done_callback(lambda _: self._drains.pop(inst.key, None))

    async def _drain_and_stop(self, inst: Instance, going: Replica) -> None:
        with contextlib.suppress(TimeoutError):
            # Requests (and WebSockets) already on it finish; none new arrives.
            await asyncio.wait_for(asyncio.shield(going.exited),
                                   inst.spec.environment.scale_down_delay)
        # Under the instance's lock: a step up must not run beside it (on Kubernetes both
        # set the Deployment's scale, and a scale-down would take the pods still starting).
        async with inst.lock:
            try:
                await self._runtime.stop([going], inst.spec.service.stop_grace)
            except Exception as exc:
                log.error("%s: replica %s could not be stopped (%s); it serves again",
                          inst.name, going.endpoint, exc)
                if inst.state == READY and not going.exited.done():
                    # Not stopped: back in the routes rather than running unseen.
                    inst.replicas.append(going)
                    self._publish()
