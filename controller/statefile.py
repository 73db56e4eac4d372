"""Files under state_dir: written atomically, read strictly.

A crash mid-write never leaves half a file (`write_json_atomic`). A file that
is there but cannot be used (not JSON, or not what its store expects) is
never guessed at: `read_state` raises `StateFileError` listing every problem
found in one pass, each formatted as ``<file>: <path.in.file>: <problem>``
(a JSON syntax error reads ``<file>: line 3, column 5: <problem>``), and the
file is left as it is for a person to fix or remove. Guessing would lose what
it held at the next write: a key, a version, which colour is live.

Each store checks its own schema next to the code that uses the data
(keys.py, versions.py, runtimes/local/colours.py); the helpers here keep
their messages alike.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any


class StateFileError(Exception):
    """A state file that cannot be used; `problems` lists every problem found, one a line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("\n".join(self.problems))


class Problems:
    """The problems found in one state file so far, already formatted with its path."""

    def __init__(self, path: str) -> None:
        self.file = os.path.abspath(path)
        self.found: list[str] = []

    def add(self, where: str, problem: str) -> None:
        """A problem at `where`, a path in the file such as `production/hello.live`."""
        self.found.append(f"{self.file}: {where or '(top level)'}: {problem}")

    def note(self, problem: str) -> None:
        """A problem about the file as a whole (unreadable, not JSON, ...)."""
        self.found.append(f"{self.file}: {problem}")


def write_json_atomic(path: str, data: Any, mode: int = 0o600) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_state(path: str, check: Callable[[Problems, Any], None], default: Any) -> Any:
    """The JSON in the state file at `path`, once `check` found no problem in it.

    A file that does not exist is `default` (no state yet). Anything else that
    keeps it from being used raises StateFileError; nothing here writes the file.
    """
    problems = Problems(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return default
    except OSError as exc:  # permissions, a directory, ...
        problems.note(f"cannot read the file: {exc.strerror or exc}")
        raise StateFileError(problems.found) from None
    except UnicodeDecodeError as exc:
        problems.note(f"not UTF-8 text: byte {exc.start} cannot be decoded")
        raise StateFileError(problems.found) from None
    duplicates: list[str] = []
    try:
        data = json.loads(text, object_pairs_hook=_keeping_duplicates(duplicates))
    except json.JSONDecodeError as exc:
        problems.note(f"line {exc.lineno}, column {exc.colno}: {exc.msg}")
        raise StateFileError(problems.found) from None
    except (ValueError, RecursionError) as exc:  # an integer of 5000 digits, nesting 1000 deep
        problems.note(f"not usable JSON: {exc}")
        raise StateFileError(problems.found) from None
    for key in dict.fromkeys(duplicates):
        # Python keeps only the last one: what the others held would be lost at the next write.
        problems.note(f"{show(key)} appears more than once in one object; keep one")
    check(problems, data)
    if problems.found:
        raise StateFileError(problems.found)
    return data


def _keeping_duplicates(
    duplicates: list[str],
) -> Callable[[list[tuple[str, Any]]], dict[str, Any]]:
    def build(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj: dict[str, Any] = {}
        for key, value in pairs:
            if key in obj:
                duplicates.append(key)
            obj[key] = value
        return obj

    return build


# --- checking a schema: the helpers each store's check uses ---


def show(value: object) -> str:
    """A value as JSON, short enough for a one-line message (a whole SHA-256 fits)."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 80 else text[:77] + "..."


def describe(value: object) -> str:
    """What a value is, in JSON's words: `string "purple"`, `number 1.5`, `array`."""
    if isinstance(value, dict):
        return "object"
    if isinstance(value, list):
        return "array"
    if value is None or isinstance(value, bool):
        return show(value)
    kind = "string" if isinstance(value, str) else "number"
    return f"{kind} {show(value)}"


_YEAR_10000 = 253402300800  # epoch seconds: no date wakegate writes is as late


def is_epoch(value: object) -> bool:
    """Epoch seconds as wakegate writes them: an integer, not before 1970, before 10000."""
    # bool is an int subclass in Python, but `true` is never a time.
    return isinstance(value, int) and not isinstance(value, bool) and \
        0 <= value < _YEAR_10000


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _name(key: str) -> str:
    # Quoted when it could not be read back from the path as written.
    return key if re.fullmatch(r"[A-Za-z0-9_./-]+", key) else json.dumps(key, ensure_ascii=False)


def instances(problems: Problems, data: object, what: str) -> Iterator[tuple[str, Any]]:
    """(name, value) of each `"<environment>/<service>": value` entry of a store's file.

    `what` says what each value is, for the problem when the file is not such an object.
    """
    if not isinstance(data, dict):
        problems.add("", f'must be an object mapping "<environment>/<service>" to {what}, '
                     f"got {describe(data)}")
        return
    for key, value in data.items():
        environment, slash, service = key.partition("/")
        name = _name(key)
        if not (slash and environment and service) or "/" in service:
            problems.add(name, 'not an instance name: use "<environment>/<service>", '
                         'e.g. "production/hello"')
            continue
        yield name, value


def fields(problems: Problems, where: str, value: object, required: Sequence[str],
           optional: Sequence[str] = ()) -> dict[str, Any] | None:
    """`value` if it is an object; every missing or unknown field is a problem."""
    allowed = [*required, *optional]
    if not isinstance(value, dict):
        problems.add(where, f"must be an object with the fields {', '.join(allowed)}, "
                     f"got {describe(value)}")
        return None
    for name in required:
        if name not in value:
            problems.add(_join(where, name), "missing: the field is required")
    for name in value:
        if name not in allowed:
            close = difflib.get_close_matches(name, allowed, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            problems.add(_join(where, _name(name)),
                         f"unknown field{hint}; allowed fields: {', '.join(allowed)}")
    return value
