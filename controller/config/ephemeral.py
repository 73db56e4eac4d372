"""What `wakegate env create` makes: `max_ephemeral_environments` and the `ephemeral:` section.

Ephemeral environments are never listed in the file (the commands make and
remove them); the file only bounds them: how many may exist at once, how
long one sleeps after its last request, the TTL `env create` gives when it
names none, and the longest TTL create or extend may set. Unset keys take
the defaults of `spec.EphemeralSettings`.
"""

from __future__ import annotations

from typing import Any

from controller import spec
from controller.config.fields import duration, integer, section, take
from controller.config.report import Report, join

__all__ = ["EPHEMERAL_KEYS", "read_ephemeral"]

EPHEMERAL_KEYS = ("idle_timeout", "ttl", "max_ttl")
MAX_TTL_LIMIT = 365 * 86400.0  # seconds: every expiry stays a date clocks and formats take
_DEFAULTS = spec.EphemeralSettings()


def read_ephemeral(report: Report, data: dict[Any, Any]) -> spec.EphemeralSettings:
    """The file's bounds on ephemeral environments (`data`: the whole file's mapping)."""
    max_environments = take(report, data, "", "max_ephemeral_environments", integer(0),
                            _DEFAULTS.max_environments)
    raw = section(report, "ephemeral", data.get("ephemeral"), EPHEMERAL_KEYS) or {}
    before = len(report)
    settings = spec.EphemeralSettings(
        max_environments=max_environments,
        idle_timeout=take(report, raw, "ephemeral", "idle_timeout", duration(positive=True),
                          _DEFAULTS.idle_timeout),
        ttl=take(report, raw, "ephemeral", "ttl", duration(positive=True), _DEFAULTS.ttl),
        max_ttl=take(report, raw, "ephemeral", "max_ttl", duration(positive=True),
                     _DEFAULTS.max_ttl),
    )
    if len(report) == before and settings.max_ttl > MAX_TTL_LIMIT:
        report.add(join("ephemeral", "max_ttl"),
                   f"is {_as_written(raw, 'max_ttl', settings.max_ttl)}, more than 365d: an "
                   "ephemeral environment is a preview, not a home; use at most 365d")
    elif len(report) == before and settings.ttl > settings.max_ttl:
        report.add(
            join("ephemeral", "ttl"),
            f"is {_as_written(raw, 'ttl', settings.ttl)}, more than max_ttl "
            f"({_as_written(raw, 'max_ttl', settings.max_ttl)}); the TTL `env create` gives "
            "must not exceed the longest TTL; lower ttl or raise max_ttl",
        )
    return settings


def _as_written(raw: dict[Any, Any], key: str, seconds: float) -> str:
    """A duration the way the file wrote it, or its default in the largest whole unit."""
    if key in raw:
        return str(raw[key])
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds / size:g}{unit} (the default)"
    return f"{seconds:g}s (the default)"
