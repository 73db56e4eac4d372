"""The generic field readers every section is built from.

A *parser* takes one YAML value and returns it checked and converted, or
raises ValueError with a sentence a person can act on. `take` and
`take_list` run a parser on a field and turn that ValueError into a problem
at the field's path, then carry on with a default, so that one bad value
never hides the next. `section` checks a mapping's keys against the ones it
allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from controller.config.report import Report, describe, join, quote_hint, suggest
from controller.units import is_number, parse_duration, parse_size, show

__all__ = [
    "NameRule",
    "byte_size",
    "check_keys",
    "duration",
    "integer",
    "named_entries",
    "number",
    "one_of",
    "parse_string",
    "section",
    "take",
    "take_list",
    "within",
]

T = TypeVar("T")


def section(
    report: Report, path: str, value: object, allowed: Sequence[str]
) -> dict[Any, Any] | None:
    """A mapping of settings (null means {}), with unknown keys reported; None if not a mapping."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        report.add(
            path, f"must be a mapping with keys {', '.join(allowed)}, got {describe(value)}"
        )
        return None
    check_keys(report, path, value, allowed)
    return value


def check_keys(report: Report, path: str, raw: dict[Any, Any], allowed: Sequence[str]) -> None:
    """Report every key of `raw` that is not a string or not one of `allowed`."""
    for key in raw:
        if not isinstance(key, str):
            report.add(join(path, key), f"keys must be strings, got {describe(key)}")
        elif key not in allowed:
            report.add(
                join(path, key),
                f"unknown key{suggest(key, allowed)}; allowed keys: {', '.join(allowed)}",
            )


def take(
    report: Report,
    raw: dict[Any, Any],
    path: str,
    key: str,
    parse: Callable[[object], T],
    default: T,
) -> T:
    """raw[key] parsed, or `default` when absent or bad (a bad value is reported)."""
    if key not in raw:
        return default
    try:
        return parse(raw[key])
    except ValueError as exc:
        report.add(join(path, key), str(exc))
        return default


def take_list(
    report: Report, path: str, value: object, parse: Callable[[object], T]
) -> tuple[T, ...]:
    """A list (null means []) whose items are parsed one by one; bad items are reported."""
    if value is None:
        return ()
    if not isinstance(value, list):
        report.add(path, f"must be a list, e.g. [a, b], got {describe(value)}")
        return ()
    items: list[T] = []
    for index, item in enumerate(value):
        try:
            items.append(parse(item))
        except ValueError as exc:
            report.add(f"{path}[{index}]", str(exc))
    return tuple(items)


@dataclass(frozen=True)
class NameRule:
    """What the names of a section's entries must look like, and the problem if one does not."""

    noun: str  # "service": the problem reads "service name "x" ..."
    allows: Callable[[object], bool]
    advice: str  # the rest of the problem: what is wrong and how to write a good name

    def check(self, report: Report, path: str, name: object) -> bool:
        if self.allows(name):
            return True
        report.add(path, f"{self.noun} name {show(name)} {self.advice}{quote_hint(name)}")
        return False


def named_entries(
    report: Report,
    path: str,
    entries: dict[Any, Any],
    rule: NameRule,
    read_entry: Callable[[Report, str, object, object], T | None],
) -> dict[Any, T]:
    """Each name's settings read, kept when both the name and the settings are valid.

    Both are always checked, so that one pass reports a bad name and its bad
    settings together.
    """
    result: dict[Any, T] = {}
    for name, settings in entries.items():
        entry_path = join(path, name)
        name_ok = rule.check(report, entry_path, name)
        entry = read_entry(report, entry_path, name, settings)
        if name_ok and entry is not None:
            result[name] = entry
    return result


def parse_string(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {describe(value)}")
    return value


def one_of(options: Sequence[str]) -> Callable[[object], str]:
    """A parser that takes exactly one of `options` (and suggests the closest on a typo)."""

    def parse(value: object) -> str:
        if not isinstance(value, str) or value not in options:
            raise ValueError(
                f"must be one of {', '.join(options)}, got {describe(value)}"
                + (suggest(value, options) if isinstance(value, str) else "")
            )
        return value

    return parse


def integer(minimum: int) -> Callable[[object], int]:
    """A parser of whole numbers from `minimum` up (a YAML `true` is not 1)."""

    def parse(value: object) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"must be an integer, got {describe(value)}")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def number(example: str) -> Callable[[object], float]:
    """A parser of finite numbers, whole or not; `example` is a good one, for the problem."""

    def parse(value: object) -> float:
        if not is_number(value):  # a YAML `true` or "100" is not a number
            raise ValueError(f"must be a number such as {example}, got {describe(value)}")
        try:
            result = float(value)  # type: ignore[arg-type]  # is_number: an int or a float
        except OverflowError:  # a YAML integer too large for a float
            result = math.inf
        if not math.isfinite(result):
            raise ValueError(f"must be a finite number such as {example}, got {show(value)}")
        return result

    return parse


def within(
    parse: Callable[[object], float], rule: str, holds: Callable[[float], bool]
) -> Callable[[object], float]:
    """`parse`, and then a check that `holds` for what it read; `rule` says it in words
    ("more than 0 (e.g. 30s)"), for the problem of a value that it does not hold for."""

    def parse_within(value: object) -> float:
        result = parse(value)
        if not holds(result):
            raise ValueError(f"must be {rule}, got {show(value)}")
        return result

    return parse_within


def duration(positive: bool) -> Callable[[object], float]:
    """A duration parser; `positive` rejects 0 where zero would mean "fail at once"."""
    if not positive:
        return parse_duration
    return within(parse_duration, "more than 0 (e.g. 30s)", lambda seconds: seconds > 0)


def byte_size(value: object) -> int:
    """A size in bytes of at least 1 (a limit of 0 would refuse everything)."""
    size = parse_size(value)
    if size == 0:
        raise ValueError(f"must be at least 1 byte, got {show(value)}")
    return size
