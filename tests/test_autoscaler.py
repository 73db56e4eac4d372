"""The autoscaler's decisions: how many replicas an instance wants, at given times, for a load.

controller.autoscale is a pure function of what it is fed (samples with their
times, ready replicas, limits), so these tests feed it explicit timestamps and
read the replica count a user would see at those times. `drive` plays the
caller: every tick it observes the load, decides, and lets ready replicas follow
desired (new ones after `start_delay`, a removed one at once).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from itertools import pairwise

import pytest

from controller.autoscale import Autoscaler, Decision
from controller.spec import Autoscale

# One replica takes 10 requests in flight; Knative's default windows and threshold.
TEN = Autoscale(target_concurrency=10.0, target_utilization=1.0, window=60.0, panic_window=6.0,
                panic_threshold=2.0, scale_down_delay=30.0)
NO_PANIC = replace(TEN, panic_threshold=10.0)  # the highest threshold config accepts


def ticks(start: int, end: int) -> list[float]:
    """One sample a second, from start (included) to end (excluded)."""
    return [float(second) for second in range(start, end)]


def drive(
    scaler: Autoscaler,
    load: Callable[[float], float],
    times: Iterable[float],
    *,
    ready: int = 1,
    minimum: int = 1,
    maximum: int = 20,
    start_delay: float = 0.0,
) -> dict[float, Decision]:
    """The caller's loop: the decision at each time; ready follows desired as described above."""
    decisions: dict[float, Decision] = {}
    started = [(float("-inf"), ready)]  # (when a decision was taken, its desired)
    for now in times:
        scaler.observe(now, load(now))
        up_by_now = [desired for at, desired in started if at <= now - start_delay][-1]
        ready = min(up_by_now, started[-1][1])  # a step up waits for starts, a step down not
        decision = scaler.decide(now, ready, minimum, maximum)
        decisions[now] = decision
        started.append((now, decision.desired))
    return decisions


def changes(decisions: dict[float, Decision]) -> list[tuple[float, int]]:
    """(time, desired) at every change of desired."""
    found: list[tuple[float, int]] = []
    for now, decision in decisions.items():
        if not found or decision.desired != found[-1][1]:
            found.append((now, decision.desired))
    return found[1:]


@pytest.mark.parametrize(("concurrency", "replicas"), [(70, 1), (71, 2), (140, 2), (350, 5)])
def test_a_steady_load_gets_load_over_target_replicas(concurrency: float, replicas: int) -> None:
    """Defaults: 100 x 0.7 = 70 requests in flight per replica. Samples at irregular times;
    from the very first (a window not yet filled counts what it has)."""
    scaler = Autoscaler(Autoscale())
    times, now = [], 0.0
    for gap in [0.2, 1.3, 0.7, 2.9, 0.05] * 20:
        times.append(now)
        now += gap
    decisions = drive(scaler, lambda _: concurrency, times, ready=replicas)
    assert {decision.desired for decision in decisions.values()} == {replicas}
    assert not any(decision.panic for decision in decisions.values())
    assert decisions[times[-1]].stable_concurrency == pytest.approx(concurrency)


def test_a_step_up_reaches_its_replicas_within_the_stable_window() -> None:
    """10 -> 40 requests in flight at t=60: 1 -> 4 replicas, growing as the average does,
    there by t=120, never beyond and never back."""
    scaler = Autoscaler(NO_PANIC)
    decisions = drive(scaler, lambda now: 10 if now < 60 else 40, ticks(0, 200))
    assert decisions[59.0].desired == 1
    assert decisions[60.0].desired == 2  # the first second of it already counts
    assert decisions[119.0].desired == 4
    desired = [decision.desired for decision in decisions.values()]
    assert desired == sorted(desired) and max(desired) == 4
    assert not any(decision.panic for decision in decisions.values())


def test_a_burst_panics_scales_on_the_panic_window_and_holds_a_window_after() -> None:
    """10x the load from t=60 to t=70, new replicas ready 15 s after they are asked for:
    the panic window's figure within 6 s (the stable one would say 2), then no replica goes
    until the burst has been over for a whole window; then one at a time."""
    scaler = Autoscaler(TEN)
    decisions = drive(scaler, lambda now: 100 if 60 <= now < 70 else 10, ticks(0, 400),
                      start_delay=15.0)
    assert decisions[59.0] == Decision(desired=1, stable_concurrency=10.0, panic=False)
    assert decisions[60.0].panic
    assert decisions[65.0].desired == 10 and decisions[65.0].stable_concurrency < 20
    rising = [decisions[now].desired for now in ticks(60, 66)]
    assert rising == sorted(rising)
    held = [decisions[now] for now in ticks(65, 70 + 60)]
    assert all(decision.panic and decision.desired == 10 for decision in held)
    assert not decisions[140.0].panic
    steps = changes({now: decisions[now] for now in ticks(66, 400)})
    assert steps[0][0] >= 130 and steps[-1][1] == 1
    assert [desired for _, desired in steps] == list(range(9, 0, -1))
    assert all(later - earlier >= 30 for (earlier, _), (later, _) in pairwise(steps))


def test_scale_down_is_one_replica_at_a_time_and_no_faster_than_the_delay() -> None:
    """5 replicas busy (50 in flight) until t=100, then idle: the first step when the stable
    average falls to 40 (t=111), then one replica every scale_down_delay, down to min."""
    scaler = Autoscaler(TEN)
    decisions = drive(scaler, lambda now: 50 if now < 100 else 0, ticks(0, 400), ready=5)
    assert changes(decisions) == [(111.0, 4), (141.0, 3), (171.0, 2), (201.0, 1)]


def test_a_step_down_waits_for_the_replica_it_removes() -> None:
    """Never below ready - 1: while the drained replica is still ready, no second step."""
    scaler = Autoscaler(replace(TEN, scale_down_delay=0.0))
    for now in ticks(0, 400):
        scaler.observe(now, 50 if now < 100 else 0)
        decision = scaler.decide(now, ready=5, minimum=1, maximum=10)
        assert decision.desired >= 4
    assert decision.desired == 4


@pytest.mark.parametrize("settings", [TEN, NO_PANIC], ids=["panic", "stable"])
def test_desired_stays_within_min_and_max(settings: Autoscale) -> None:
    scaler = Autoscaler(settings)
    busy = drive(scaler, lambda _: 1000, ticks(0, 100), minimum=2, maximum=3)
    assert {decision.desired for decision in busy.values()} == {3}
    idle = drive(scaler, lambda _: 0, ticks(100, 400), ready=3, minimum=2, maximum=3)
    assert idle[399.0].desired == 2 and idle[399.0].stable_concurrency == 0


def test_going_to_zero_is_left_to_the_idle_path() -> None:
    """min 0: an idle instance with a ready replica keeps 1; asleep (none ready), 0."""
    scaler = Autoscaler(TEN)
    decisions = drive(scaler, lambda now: 20 if now < 10 else 0, ticks(0, 300), minimum=0)
    assert decisions[299.0].desired == 1
    assert Autoscaler(TEN).decide(0.0, ready=0, minimum=0, maximum=2).desired == 0


def test_with_no_ready_replica_desired_follows_the_load_at_once() -> None:
    """Waking: held requests ask for replicas from the first sample. All replicas gone: a lower
    desired applies at once (nothing to drain), not one step per scale_down_delay."""
    waking = Autoscaler(TEN)
    waking.observe(0.0, 25)
    assert waking.decide(0.0, ready=0, minimum=0, maximum=10).desired == 3

    scaler = Autoscaler(TEN)
    busy = drive(scaler, lambda now: 50 if now < 60 else 5, ticks(0, 100), ready=5)
    assert busy[99.0].desired == 4  # one step so far, as replicas were ready
    scaler.observe(100.0, 5)
    decision = scaler.decide(100.0, ready=0, minimum=1, maximum=10)
    assert decision == Decision(desired=2, stable_concurrency=19.25, panic=False)


def test_reconfigure_keeps_the_load_already_seen() -> None:
    """30 in flight at 10 per replica: 3. Now 6 per replica: 5 at once, no window to refill."""
    scaler = Autoscaler(TEN)
    assert drive(scaler, lambda _: 30, ticks(0, 60), ready=3)[59.0].desired == 3
    scaler.reconfigure(replace(TEN, target_concurrency=6.0))
    decision = scaler.decide(59.5, ready=3, minimum=1, maximum=10)
    assert decision == Decision(desired=5, stable_concurrency=30.0, panic=False)
