"""Autoscale settings on the cluster's objects: the `wakegate.dev/autoscale-*` annotations.

On an environment's namespace they set the environment's settings (over the
config file's or the kind's defaults); on a Deployment, the service's
overrides. One annotation per `spec.Autoscale` field, its name in dashes
(`wakegate.dev/autoscale-target-concurrency: "50"`,
`wakegate.dev/autoscale-window: 30s`): durations as in the config file
(controller.units), numbers as decimals, within the bounds the config file's
`autoscale:` keys have (controller/autoscale_bounds.py). A bad one is said
once and passed over; the others still apply.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping

from ...autoscale_bounds import AUTOSCALE_BOUNDS, windows_fit
from ...spec import Autoscale
from ...units import parse_duration, show

ANNOTATION_PREFIX = "wakegate.dev/autoscale-"


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ValueError(f"bad number {show(raw)}: use a decimal number such as 100 or 0.7")
    return value


ANNOTATIONS = {ANNOTATION_PREFIX + name.replace("_", "-"): name for name in AUTOSCALE_BOUNDS}


def read_autoscale(annotations: Mapping[str, str], base: Autoscale, where: str,
                   warn: Callable[[str], None]) -> dict[str, float]:
    """The settings the annotations set validly (field → value), over `base`, the settings
    they change ("deployment ns/name", "namespace ns": where, for the warnings)."""
    settings: dict[str, float] = {}
    for annotation, raw in sorted(annotations.items()):
        if not annotation.startswith(ANNOTATION_PREFIX):
            continue
        name = ANNOTATIONS.get(annotation)
        if name is None:
            warn(f"{where}: {annotation}: not an autoscale setting (these are: "
                 f"{', '.join(ANNOTATIONS)}); ignored")
            continue
        bound = AUTOSCALE_BOUNDS[name]
        try:
            value = parse_duration(raw) if bound.is_duration else _number(raw)
            if not bound.holds(value):
                raise ValueError(f"must be {bound.rule}, got {show(raw)}")
        except ValueError as exc:
            warn(f"{where}: {annotation}: {exc}; using the value it would override")
            continue
        settings[name] = value
    combined = dataclasses.replace(base, **settings)
    windows = [n for n in ("window", "panic_window") if n in settings]
    if windows and not windows_fit(combined):
        warn(f"{where}: the autoscale panic window ({combined.panic_window:g}s) is longer than "
             f"the window ({combined.window:g}s) it is part of; ignored: "
             f"{', '.join(a for a, n in ANNOTATIONS.items() if n in windows)}")
        for name in windows:
            del settings[name]
    return {name: settings[name] for name in AUTOSCALE_BOUNDS if name in settings}  # in field order
