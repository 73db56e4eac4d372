"""Reading the file: bytes to UTF-8 text to YAML data, each failure a problem with its place.

PyYAML's own errors are reworded to ``line 3, column 5: invalid YAML: ...``,
and a key written twice in one mapping is a problem here (YAML would quietly
keep the last one, which is rarely what was meant).
"""

from __future__ import annotations

from typing import Any

import yaml

from controller.config.report import Report
from controller.units import show

__all__ = ["UNREADABLE", "read_yaml"]

# read_yaml's answer when the file gave no data: unreadable, not UTF-8 or not
# YAML, as opposed to an empty document (None).
UNREADABLE = object()


def read_yaml(report: Report, file: str, raw: bytes | None = None) -> object:
    """The YAML data in `file` (or in `raw`, its bytes), or UNREADABLE with the problem noted."""
    text = _read_text(report, file, raw)
    if text is None:
        return UNREADABLE
    return _parse_yaml(report, text)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reports duplicate mapping keys instead of keeping the last one."""

    def __init__(self, stream: str, report: Report) -> None:
        super().__init__(stream)
        self._report = report

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        self._check_duplicates(node)
        return super().construct_mapping(node, deep=deep)

    def _check_duplicates(self, node: yaml.MappingNode) -> None:
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            # `<<` merges are meant to be overridden by the mapping's own keys.
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in first_line:
                    self._report.note(
                        f"line {line}: duplicate key {show(key)} (first at line "
                        f"{first_line[key]}); YAML would keep only the last one, so remove "
                        "or rename one of them"
                    )
                else:
                    first_line[key] = line
            except TypeError:  # unhashable key: SafeLoader itself reports it with a line
                continue


def _read_text(report: Report, file: str, raw: bytes | None) -> str | None:
    if raw is None:
        try:
            with open(file, "rb") as stream:
                raw = stream.read()
        except OSError as exc:
            report.note(f"cannot read the file: {exc.strerror or exc}")
            return None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        report.note(f"byte {exc.start}: the file is not UTF-8 text; save it as UTF-8")
        return None


def _parse_yaml(report: Report, text: str) -> object:
    loader = _Loader(text, report)
    try:
        return loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        report.note(_yaml_problem(exc))
    except yaml.YAMLError as exc:  # e.g. a control character: no line/column mark
        report.note(f"not valid YAML: {' '.join(str(exc).split())}")
    except RecursionError:  # absurdly deep nesting: PyYAML recurses
        report.note("not usable YAML: it is nested too deeply")
    finally:
        loader.dispose()
    return UNREADABLE


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    problem = exc.problem or exc.context or "syntax error"
    context = ""
    if exc.context and exc.problem and exc.context_mark:
        context = f" ({exc.context} at line {exc.context_mark.line + 1})"
    return f"{where}invalid YAML: {problem}{context}"
