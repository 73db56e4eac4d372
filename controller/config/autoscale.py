"""The `autoscale:` block of an environment, and a service's override of the same keys.

An environment's block becomes its `spec.Autoscale` (unset keys take
spec.Autoscale()'s defaults, Knative KPA's own). A service's block sets only
some keys over the autoscale settings of every environment it is placed in,
so it is checked twice: alone when it is read, and combined with each of
those environments (a service's panic_window against an environment's
window), the problem naming the service's own field. The bounds, and why,
are in controller.autoscale_bounds; this module words them for the file.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

from controller import spec
from controller.autoscale_bounds import AUTOSCALE_BOUNDS, windows_fit
from controller.config.fields import number, section, take, within
from controller.config.report import Report, join
from controller.units import is_number, parse_duration

__all__ = ["AUTOSCALE_KEYS", "check_override", "read_autoscale", "read_override"]

AUTOSCALE_KEYS = tuple(f.name for f in dataclasses.fields(spec.Autoscale))
_DEFAULTS = spec.Autoscale()
_WINDOW_RULE = "panic_window must not be longer than window, the stable window it is part of"
# Each key: a good value, and what it means, said after its bound in a problem.
_WORDS: dict[str, tuple[str, str]] = {
    "target_concurrency": ("100", "requests in flight one replica is meant to take, e.g. 100"),
    "target_utilization": ("0.7", "the share of target_concurrency to aim at, e.g. 0.7"),
    "window": ("60s", "the stable window, e.g. 60s"),
    "panic_window": ("6s", "the short window that can start a panic, e.g. 6s"),
    "panic_threshold": ("2.0", "the demand, in times the current capacity, that starts a "
                        "panic, e.g. 2.0; below 1.1 it would panic at steady load and never "
                        "scale down"),
    "scale_down_delay": ("30s", "the time between two steps down, e.g. 30s"),
}
# Knative takes percentages (70 for a utilization of 0.7, 200 for a threshold of 2): a
# number in (10 x most, 100 x most] gets the fraction to write instead.
_PERCENTAGE_OF = {"target_utilization": 1.0, "panic_threshold": 10.0}


def _parser(key: str) -> Callable[[object], float]:
    bound = AUTOSCALE_BOUNDS[key]
    example, meaning = _WORDS[key]
    read = parse_duration if bound.is_duration else number(example)
    parse = within(read, f"{bound.rule} ({meaning})", bound.holds)
    most = _PERCENTAGE_OF.get(key)
    if most is None:
        return parse

    def parse_fraction(value: object) -> float:
        try:
            return parse(value)
        except ValueError as exc:
            if is_number(value) and most * 10 < value <= most * 100:  # type: ignore[operator]
                raise ValueError(f"{exc}; for {value:g}% write {value / 100:g}") from None
            raise

    return parse_fraction


_PARSERS = {key: _parser(key) for key in AUTOSCALE_KEYS}


def read_autoscale(report: Report, path: str, value: object) -> spec.Autoscale:
    """An environment's `autoscale:` block (null or missing: every default)."""
    settings, bad = _read_keys(report, path, value)
    autoscale = dataclasses.replace(_DEFAULTS, **settings)
    if not bad & {"window", "panic_window"}:  # a bad one is reported already, as it is
        _check_windows(report, path, autoscale, settings, elsewhere="the default")
    return autoscale


def read_override(report: Report, path: str, value: object) -> tuple[tuple[str, float], ...]:
    """A service's `autoscale:` block: (key, value) for the keys it sets, in AUTOSCALE_KEYS order.

    Only a panic_window and a window both set here are compared here; one of
    them alone is compared with each environment's by `check_override`.
    """
    settings, _ = _read_keys(report, path, value)
    if "window" in settings and "panic_window" in settings:
        _check_windows(report, path, dataclasses.replace(_DEFAULTS, **settings), settings, "")
    return tuple(settings.items())


def check_override(
    report: Report,
    path: str,
    override: tuple[tuple[str, float], ...],
    environments: Iterable[spec.Environment],
) -> None:
    """A service's override combined with each environment it is placed in (valid ones)."""
    settings = dict(override)
    if ("window" in settings) == ("panic_window" in settings):
        return  # both: compared when read; neither: each environment's own check holds
    for environment in environments:
        combined = dataclasses.replace(environment.autoscale, **settings)
        _check_windows(report, path, combined, settings,
                       elsewhere=f"in environment {environment.name}")


def _read_keys(report: Report, path: str, value: object) -> tuple[dict[str, float], set[str]]:
    """The valid settings the block sets, in AUTOSCALE_KEYS order, and the keys set badly
    (each reported)."""
    raw = section(report, path, value, AUTOSCALE_KEYS) or {}
    settings: dict[str, float] = {}
    bad: set[str] = set()
    for key in AUTOSCALE_KEYS:
        before = len(report)
        parsed = take(report, raw, path, key, _PARSERS[key], 0.0)
        if len(report) > before:
            bad.add(key)
        elif key in raw:
            settings[key] = parsed
    return settings, bad


def _check_windows(
    report: Report,
    path: str,
    autoscale: spec.Autoscale,
    own: Mapping[str, float],
    elsewhere: str,
) -> None:
    """Report a panic window longer than its window, at whichever of the two `own` sets.

    `own`: the keys set at `path`; `elsewhere`: where the other value came from
    ("the default", "in environment production"), said next to it.
    """
    if windows_fit(autoscale):
        return
    panic, window = _seconds(autoscale.panic_window), _seconds(autoscale.window)
    if "panic_window" in own:
        where = window if "window" in own else f"{window}, {elsewhere}"
        report.add(join(path, "panic_window"),
                   f"is {panic}, longer than window ({where}); {_WINDOW_RULE}")
    else:
        report.add(join(path, "window"),
                   f"is {window}, shorter than panic_window ({panic}, {elsewhere}); {_WINDOW_RULE}")


def _seconds(value: float) -> str:
    return f"{value:g}s"
