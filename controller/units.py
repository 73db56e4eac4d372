"""Units of the config file and the CLI: durations ("150ms", "15m") and sizes ("64MiB").

At the bottom of the controller: config reading, the CLI and the Kubernetes
runtime (annotations hold durations) all parse the same way, and none of them
has to import another to do it.
"""

from __future__ import annotations

import json
import math
import re
from fractions import Fraction

__all__ = ["is_number", "parse_duration", "parse_size", "show"]

_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h|d)?\s*")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*", re.IGNORECASE)

_UNIT_SECONDS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_UNIT_BYTES = {
    None: 1,
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}

_DURATION_HINT = "use a number of seconds or a value like 150ms, 30s, 15m, 1h"
_SIZE_HINT = "use a number of bytes or a value like 512, 10KB, 10KiB, 64MiB, 1GiB"

def show(value: object) -> str:
    """A value as it would appear in YAML, short enough for a one-line message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = value if isinstance(value, str) else str(value)
    if len(text) > 60:  # keep every problem on one readable line
        text = text[:57] + "..."
    return json.dumps(text, ensure_ascii=False) if isinstance(value, str) else text


def is_number(value: object) -> bool:
    # bool is an int subclass in Python, but `true` is never meant as a number.
    return isinstance(value, int | float) and not isinstance(value, bool)


def parse_duration(value: object) -> float:
    """Seconds from a number of seconds or a string such as "150ms", "1.5s", "15m", "1h".

    Raises ValueError with a sentence a person can act on.
    """
    seconds: float | None = None
    if is_number(value):
        try:
            seconds = float(value)  # type: ignore[arg-type]
        except OverflowError:  # a YAML integer too large for a float
            seconds = None
    elif isinstance(value, str):
        match = _DURATION.fullmatch(value)
        if match:
            seconds = float(match[1]) * _UNIT_SECONDS[match[2]]
    if seconds is None or not math.isfinite(seconds):
        raise ValueError(f"bad duration {show(value)}: {_DURATION_HINT}")
    if seconds < 0:
        raise ValueError(f"bad duration {show(value)}: a duration cannot be negative")
    return seconds


def parse_size(value: object) -> int:
    """Bytes from an integer or a string such as "512", "10KB" (1000), "10KiB" (1024), "64MiB".

    Raises ValueError with a sentence a person can act on.
    """
    amount: Fraction | None = None
    if is_number(value) and (not isinstance(value, float) or value.is_integer()):
        amount = Fraction(value)  # type: ignore[arg-type]
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match:
            unit = match[2].lower() if match[2] else None
            amount = Fraction(match[1]) * _UNIT_BYTES[unit]
    if amount is None:
        raise ValueError(f"bad size {show(value)}: {_SIZE_HINT}")
    if amount < 0:
        raise ValueError(f"bad size {show(value)}: a size cannot be negative")
    if amount.denominator != 1:
        raise ValueError(f"bad size {show(value)}: it is not a whole number of bytes")
    return int(amount)
