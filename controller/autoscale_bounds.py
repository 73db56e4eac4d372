"""The bounds of the autoscale settings: what each `spec.Autoscale` field may be.

At the bottom of the controller, beside spec, units and names: the config
file's `autoscale:` keys (controller.config.autoscale) and the Kubernetes
annotations that set the same fields check by these bounds, and neither has
to import the other to do it. Only the rules live here, with the few words
that state them; each caller words its own problem.

They are Knative's (the KPA's) where they fit: a target of at least 0.01, a
utilization from 0.01 to 1, a panic threshold from 1.1 to 10 (its 110% to 1000%:
at 1 the short window would call a panic at steady load, and the instance
would never scale down), and a panic window no longer than the stable window
it is the short end of. Windows need only be above 0 (Knative wants 6 s to
1 h), so that tests and benches can use windows of hundreds of milliseconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from controller.spec import Autoscale

__all__ = ["AUTOSCALE_BOUNDS", "Bound", "windows_fit"]


@dataclass(frozen=True, slots=True)
class Bound:
    """What one field's value must be."""

    holds: Callable[[float], bool]
    rule: str  # the same in words, to follow "must be": "more than 0"
    is_duration: bool  # written as a duration ("30s"), else as a plain number


AUTOSCALE_BOUNDS: dict[str, Bound] = {
    # Not just above 0: their product divides the load, and a tiny one (1e-310) would
    # overflow the replica count.
    "target_concurrency": Bound(lambda v: v >= 0.01, "at least 0.01", is_duration=False),
    "target_utilization": Bound(lambda v: 0.01 <= v <= 1, "from 0.01 to 1",
                                is_duration=False),
    "window": Bound(lambda v: v > 0, "more than 0", is_duration=True),
    "panic_window": Bound(lambda v: v > 0, "more than 0", is_duration=True),
    "panic_threshold": Bound(lambda v: 1.1 <= v <= 10, "from 1.1 to 10", is_duration=False),
    "scale_down_delay": Bound(lambda v: v >= 0, "at least 0", is_duration=True),
}
if set(AUTOSCALE_BOUNDS) != {f.name for f in dataclasses.fields(Autoscale)}:
    raise AssertionError("AUTOSCALE_BOUNDS needs a bound for every spec.Autoscale field")


def windows_fit(settings: Autoscale) -> bool:
    """The panic window is no longer than the stable window it is the short end of."""
    return settings.panic_window <= settings.window
