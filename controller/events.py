"""The structured fields of a state-change log line (woke, slept, promoted, ...)."""

from __future__ import annotations

from typing import Any

from .spec import InstanceSpec


def event(spec: InstanceSpec, name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: with `--log-format json` these become the line's fields."""
    return {"fields": {"event": name, "environment": spec.environment.name,
                       "service": spec.service.name, **fields}}
