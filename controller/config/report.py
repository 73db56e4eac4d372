"""Collecting the problems of one config file, and the words they are written in.

Every reader of the package reports to one `Report` instead of raising, so
that one pass finds every problem. The helpers below word a value the way a
person wrote it in YAML ("got integer 5", "got mapping"), so that a message
points at the text in the file rather than at Python's view of it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

from controller.units import show

__all__ = ["Report", "describe", "join", "quote_hint", "suggest", "type_name"]


class Report:
    """Problems found so far, already formatted with the file name."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[str] = []
        self.warnings: list[str] = []  # valid, but probably not what was meant

    def add(self, path: str, problem: str) -> None:
        self.problems.append(f"{self.file}: {path or '(top level)'}: {problem}")

    def warn(self, path: str, warning: str) -> None:
        self.warnings.append(f"{self.file}: {path}: warning: {warning}")

    def note(self, problem: str) -> None:
        """A problem about the file as a whole (unreadable, not YAML, ...)."""
        self.problems.append(f"{self.file}: {problem}")

    def __len__(self) -> int:
        return len(self.problems)


def join(path: str, key: object) -> str:
    """The dotted path of `key` inside `path` ("services.hello"); "" is the top level."""
    text = key if isinstance(key, str) else show(key)
    return f"{path}.{text}" if path else text


# bool before int: in Python a bool is an int, but YAML's `true` is no number.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "number"),
    (str, "string"),
    (list, "list"),
    (dict, "mapping"),
)


def type_name(value: object) -> str:
    """The YAML word for a value's type, as a person wrote it in the file."""
    if value is None:
        return "null"
    for python_type, name in _TYPE_NAMES:
        if isinstance(value, python_type):
            return name
    return type(value).__name__  # e.g. a date: YAML reads 2024-01-01 as one


def describe(value: object) -> str:
    """A value for "got ...": its type, and the value itself when it is short to show."""
    if value is None or isinstance(value, dict | list):
        return type_name(value)
    return f"{type_name(value)} {show(value)}"


def suggest(word: str, options: Iterable[str]) -> str:
    """' (did you mean "x"?)' for the closest option, or "" when none is close."""
    close = difflib.get_close_matches(word, list(options), n=1)
    if not close:
        lowered = {o.lower(): o for o in options}
        close = [lowered[word.lower()]] if word.lower() in lowered else []
    return f' (did you mean "{close[0]}"?)' if close else ""


def quote_hint(name: object) -> str:
    """Why a name that is not a string is wrong, for the end of a name problem."""
    # YAML 1.1 reads unquoted on/off/yes/no as booleans and 1.0 as a number.
    if isinstance(name, str):
        return ""
    return f" (YAML read this name as a {type_name(name)}; quote it if you meant a name)"
