"""How a command stops on a problem: one message (or one line per problem) on stderr and
an exit status, never a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

from ..config import ConfigError, load_config
from ..spec import Config

EXIT_USAGE = 2


def fail(message: str, code: int = 1) -> NoReturn:
    print(f"wakegate: {message}", file=sys.stderr)
    sys.exit(code)


def exit_with(problems: list[str]) -> NoReturn:
    """Print the problems (`file: path: problem`), one a line, and exit 2."""
    for problem in problems:
        print(problem, file=sys.stderr)
    sys.exit(EXIT_USAGE)


def load(path: str) -> Config:
    """The config file, or exit 2 listing every problem in it."""
    try:
        return load_config(path)
    except ConfigError as exc:
        exit_with(exc.problems)
