"""The autoscaler's decision: how many replicas an instance wants, from the load it carries.

A pure decider, one per instance: the caller feeds it samples and asks it for a
decision, both with the time (monotonic seconds); it keeps no clock, does no
I/O and never awaits. It works the way Knative's KPA does
(knative/serving pkg/autoscaler/scaling/autoscaler.go), with its defaults:

- **Load.** A sample is the concurrency of the instance at that time: requests
  in flight summed over every live proxy, held requests included. Like a KPA
  stat, each sample stands for the time since the sample before it, and the
  latest one also for the time since it up to now (a step function; the first
  sample only marks where the observed time begins). The stable average is
  that load averaged over the last `window` seconds, the panic average over the
  last `panic_window`; while less than a window has been observed, over what
  has (like KPA's partially filled buckets).
- **Desired.** ceil(stable average / (target_concurrency x target_utilization)).
- **Panic.** It starts when the panic window asks for `panic_threshold` x the
  ready replicas (KPA: desired panic pod count / max(1, ready) >= threshold)
  and ends once that has not held for a whole `window`, so the burst has made
  its way into the stable average. While panicking, desired is the larger of
  the stable and the panic figure and never goes down.
- **Scale-down.** desired goes down only when `scale_down_delay` has passed
  since its last change (up or down) and not in panic (so never within a
  stable window of the last burst), and never below ready - 1: one replica at
  a time, drained by the caller. With no ready replica (asleep, waking, or all
  gone) there is nothing to drain: outside panic, a lower desired applies at
  once. The first decision counts as a change to `ready`.
- **Limits.** The result is clamped to minimum..maximum (a new limit applies at
  once). With minimum 0, desired stays at least 1 while a replica is ready or
  there was load in the stable window: going to zero is the idle path's job,
  never the autoscaler's; it says 0 only for an instance with no ready replica
  and no load.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from controller.spec import Autoscale

__all__ = ["Autoscaler", "Decision"]


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int  # replicas wanted now, clamped to minimum..maximum
    stable_concurrency: float  # average requests in flight over the stable window
    panic: bool  # in panic mode now


class Autoscaler:
    """The decider for one instance: `observe` the load, `decide` the replicas; see the module."""

    def __init__(self, settings: Autoscale) -> None:
        self._settings = settings
        self._samples: deque[tuple[float, float]] = deque()  # (time, concurrency), oldest first
        self._desired: int | None = None  # the last decision; None before the first
        self._changed_at = 0.0  # when desired last changed (or the first decision)
        self._over_threshold_at: float | None = None  # the panic threshold last held; None: calm

    def observe(self, now: float, concurrency: float) -> None:
        """One sample of the instance's concurrency at `now`."""
        if self._samples:
            last_time, last_value = self._samples[-1]
            now = max(now, last_time)  # times never go back, even if a caller's do
            if concurrency == last_value and len(self._samples) > 1:
                # The same load again: the last sample now stands for the time up to here too
                # (the first one stays: it says where the observed time begins).
                self._samples[-1] = (now, concurrency)
                return
        self._samples.append((now, concurrency))
        # Keep the latest sample at or before the longest window's start: it bounds the window.
        horizon = now - max(self._settings.window, self._settings.panic_window)
        while len(self._samples) > 1 and self._samples[1][0] <= horizon:
            self._samples.popleft()

    def reconfigure(self, settings: Autoscale) -> None:
        """New settings (an applied config); the samples, the panic and desired are kept."""
        self._settings = settings

    def decide(self, now: float, ready: int, minimum: int, maximum: int) -> Decision:
        """Replicas wanted at `now`, given `ready` replicas and the instance's limits."""
        settings = self._settings
        target = settings.target_concurrency * settings.target_utilization
        stable = self._average(now, settings.window)
        stable_wanted = _replicas(stable, target)
        panic_wanted = _replicas(self._average(now, settings.panic_window), target)

        if panic_wanted / max(1, ready) >= settings.panic_threshold:
            self._over_threshold_at = now
        elif (self._over_threshold_at is not None
              and now - self._over_threshold_at >= settings.window):
            self._over_threshold_at = None
        panic = self._over_threshold_at is not None

        if self._desired is None:  # the first decision: as if desired had just become `ready`
            self._desired, self._changed_at = ready, now
        previous = self._desired
        wanted = max(stable_wanted, panic_wanted) if panic else stable_wanted
        if wanted < previous and (
            panic or (ready > 0 and now - self._changed_at < settings.scale_down_delay)
        ):
            wanted = previous
        if ready > 0:
            wanted = max(wanted, ready - 1)  # one replica at a time
        floor = max(minimum, 1 if ready > 0 else 0)
        desired = min(maximum, max(floor, wanted))

        if desired != previous:
            self._desired, self._changed_at = desired, now
        return Decision(desired=desired, stable_concurrency=stable, panic=panic)

    def _average(self, now: float, length: float) -> float:
        """The load averaged over [now - length, now], or over the part of it observed."""
        start = now - length
        total = 0.0
        end = now  # walking back: the earliest time accounted for so far
        value: float | None = None  # the load between the sample at hand and `end`
        for at, concurrency in reversed(self._samples):
            if at > now:
                continue  # a sample after `now` (a caller asking about the past)
            if value is None:
                value = concurrency  # the latest sample holds up to now
            begin = max(at, start)
            total += value * (end - begin)
            end = begin
            if at <= start:
                break
            value = concurrency  # this sample stands for the time since the one before it
        if end >= now:  # no time observed yet: the latest sample itself, if any
            return value or 0.0
        return total / (now - end)


def _replicas(concurrency: float, target: float) -> int:
    """ceil(concurrency / target), blind to float noise: 3 x 0.1 over 0.3 is 1 replica, not 2."""
    return math.ceil(round(concurrency / target, 6))
