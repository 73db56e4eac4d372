"""The environments section: each name and its settings into a `spec.Environment`.

An environment's kind (spec.KINDS) picks the defaults of its unset keys
(spec.KIND_DEFAULTS); the kind may be left out when the name is itself a
kind. A file without an environments section has `private` and `demo`.
Private and demo never scale by load (the platform promises it), so their
max_replicas is at most 1. The `autoscale:` block is read by config.autoscale.
The `ephemeral` kind is not one the file may use: those environments are made
and removed by `wakegate env create/delete`. An environment's `prefix` (object
names and image tags) defaults by kind (spec.DEFAULT_PREFIXES).
"""

from __future__ import annotations

from typing import Any

from controller import spec
from controller.config.autoscale import read_autoscale
from controller.config.fields import (
    NameRule,
    duration,
    integer,
    named_entries,
    one_of,
    section,
    take,
)
from controller.config.report import Report, describe, join
from controller.names import is_environment_name, is_prefix
from controller.units import parse_duration, show

__all__ = ["CONFIG_KINDS", "DEFAULT_SERVICE_ENVIRONMENTS", "read_environments"]

ENVIRONMENT_KEYS = (
    "kind", "access", "idle_timeout", "min_replicas", "max_replicas", "hold_timeout",
    "hold_queue_size", "scale_down_delay", "wake_strategy", "crash_backoff", "autoscale",
    "prefix",
)
CRASH_BACKOFF_KEYS = ("after", "first", "max")
ACCESS_MODES = ("public", "api_key")
# The environments of a file that has no environments section, and where a
# service goes when it does not say.
DEFAULT_SERVICE_ENVIRONMENTS = ("private", "demo")
# The platform's promise: these kinds never scale by load, whatever their settings.
SINGLE_REPLICA_KINDS = ("private", "demo")
NEVER = "never"
# The kinds a file may give an environment: every kind but the one `env create` makes.
CONFIG_KINDS = tuple(kind for kind in spec.KINDS if kind != spec.EPHEMERAL)
_EPHEMERAL_ADVICE = (
    "ephemeral environments are made by `wakegate env create NAME --from ENV`, not in the "
    "config"
)

_ENVIRONMENT_NAME = NameRule(
    "environment",
    is_environment_name,
    "is not valid: use 1 to 24 letters, digits and dashes, starting with a letter",
)


def read_environments(
    report: Report, value: object
) -> tuple[dict[str, spec.Environment], list[str]]:
    """The valid environments, and every name the file defines (valid or not).

    Services are checked against all defined names so that one bad environment
    setting does not also make every service placed in it look wrong.
    """
    if value is None:
        value = {name: {} for name in DEFAULT_SERVICE_ENVIRONMENTS}
    if not isinstance(value, dict):
        report.add(
            "environments",
            f"must be a mapping of environment name to settings, got {describe(value)}",
        )
        return {}, []
    result = named_entries(report, "environments", value, _ENVIRONMENT_NAME, _environment)
    return result, [name for name in value if isinstance(name, str)]


def _environment(
    report: Report, path: str, name: object, settings: object
) -> spec.Environment | None:
    raw = section(report, path, settings, ENVIRONMENT_KEYS)
    if raw is None:
        return None
    before = len(report)
    kind = _environment_kind(report, path, name, raw)
    defaults = spec.KIND_DEFAULTS.get(kind or "", spec.KIND_DEFAULTS["private"])
    access = take(report, raw, path, "access", one_of(ACCESS_MODES), defaults.access)
    idle_timeout = take(report, raw, path, "idle_timeout", _idle_timeout, defaults.idle_timeout)
    replicas_before = len(report)
    min_replicas = take(report, raw, path, "min_replicas", integer(0), defaults.min_replicas)
    max_replicas = take(report, raw, path, "max_replicas", integer(0), defaults.max_replicas)
    if kind is not None and len(report) == replicas_before:
        _check_replicas(report, path, kind, min_replicas, max_replicas, "max_replicas" in raw)
    hold_timeout = take(
        report, raw, path, "hold_timeout", duration(positive=True), spec.DEFAULT_HOLD_TIMEOUT
    )
    hold_queue_size = take(
        report, raw, path, "hold_queue_size", integer(1), spec.DEFAULT_HOLD_QUEUE_SIZE
    )
    scale_down_delay = take(
        report, raw, path, "scale_down_delay", duration(positive=False),
        spec.DEFAULT_SCALE_DOWN_DELAY,
    )
    wake_strategy = take(report, raw, path, "wake_strategy", one_of(spec.WAKE_STRATEGIES),
                         "hold")
    crash_backoff = _crash_backoff(report, join(path, "crash_backoff"), raw.get("crash_backoff"))
    autoscale = read_autoscale(report, join(path, "autoscale"), raw.get("autoscale"))
    default_prefix = spec.DEFAULT_PREFIXES.get(kind or "", "")
    prefix = take(report, raw, path, "prefix", _prefix, default_prefix)
    if kind is None or len(report) > before:
        return None
    return spec.Environment(
        name=str(name),
        kind=kind,
        access=access,  # type: ignore[arg-type]  # checked against ACCESS_MODES
        idle_timeout=idle_timeout,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        hold_timeout=hold_timeout,
        hold_queue_size=hold_queue_size,
        scale_down_delay=scale_down_delay,
        wake_strategy=wake_strategy,
        crash_backoff=crash_backoff,
        autoscale=autoscale,
        prefix=prefix,
    )


def _check_replicas(
    report: Report, path: str, kind: str, minimum: int, maximum: int, max_set: bool
) -> None:
    if minimum > maximum:
        report.add(
            join(path, "min_replicas"),
            f"is {minimum}, more than max_replicas ({maximum}"
            f"{'' if max_set else f', the {kind} default'}); "
            "min_replicas must not exceed max_replicas",
        )
    if kind in SINGLE_REPLICA_KINDS and maximum > 1:
        scaling = ", ".join(k for k in CONFIG_KINDS if k not in SINGLE_REPLICA_KINDS)
        report.add(
            join(path, "max_replicas"),
            f"is {maximum}, but {' and '.join(SINGLE_REPLICA_KINDS)} environments run at most "
            f"1 replica: they never scale by load; remove max_replicas, or use a kind that "
            f"scales ({scaling})",
        )


def _idle_timeout(value: object) -> float | None:
    # null and "never" both mean the environment never sleeps.
    if value is None or value == NEVER:
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f'{exc}, or "never" for an environment that never sleeps') from None
    if seconds == 0:
        raise ValueError('must be more than 0 (e.g. 15m), or "never" to never sleep')
    return seconds


def _crash_backoff(report: Report, path: str, value: object) -> spec.CrashBackoff:
    raw = section(report, path, value, CRASH_BACKOFF_KEYS) or {}
    d = spec.CrashBackoff()
    before = len(report)
    backoff = spec.CrashBackoff(
        after=take(report, raw, path, "after", integer(1), d.after),
        first=take(report, raw, path, "first", duration(positive=True), d.first),
        max=take(report, raw, path, "max", duration(positive=True), d.max),
    )
    if len(report) == before and backoff.first > backoff.max:
        report.add(join(path, "first"), f"is {backoff.first:g}s, more than max "
                   f"({backoff.max:g}s); the back-off starts at first and doubles up to max")
    return backoff


def _prefix(value: object) -> str:
    # null and "" both mean no prefix: object names and image tags as they are.
    if value is None or value == "":
        return ""
    if not is_prefix(value):
        raise ValueError(
            'must be 1 to 8 lowercase letters and digits (e.g. "dev"), or "" for no prefix, '
            f"got {describe(value)}"
            # YAML reads prefix: 01 as the integer 1: a prefix of digits needs its quotes.
            + (f' (quote it: "{value}")' if type(value) is int else "")
        )
    return value


def _config_kind(value: object) -> str:
    if value == spec.EPHEMERAL:
        raise ValueError(
            f'is "ephemeral", but {_EPHEMERAL_ADVICE}; use one of {", ".join(CONFIG_KINDS)}'
        )
    return one_of(CONFIG_KINDS)(value)


def _environment_kind(report: Report, path: str, name: object, raw: dict[Any, Any]) -> str | None:
    if "kind" in raw:
        return take(report, raw, path, "kind", _config_kind, None)
    if isinstance(name, str) and name in CONFIG_KINDS:
        return name
    if name == spec.EPHEMERAL:
        report.add(
            join(path, "kind"),
            f"is required: {_EPHEMERAL_ADVICE}; to call a config environment "
            f"\"ephemeral\", add kind: with one of {', '.join(CONFIG_KINDS)}",
        )
        return None
    report.add(
        join(path, "kind"),
        f"is required because {show(name)} is not itself a kind; "
        f"add kind: with one of {', '.join(CONFIG_KINDS)}",
    )
    return None
