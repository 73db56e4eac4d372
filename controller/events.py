"""The structured fields of a state-change log line (woke, slept, promoted, an environment
made or gone, ...)."""

from __future__ import annotations

from typing import Any

from .spec import InstanceSpec


def event(spec: InstanceSpec, name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log call: with `--log-format json` these become the line's fields."""
    return {"fields": {"event": name, "environment": spec.environment.name,
                       "service": spec.service.name, **fields}}


def environment_event(environment: str, name: str, **fields: Any) -> dict[str, Any]:
    """`extra=` for a log line about a whole environment (an ephemeral one made or gone)."""
    return {"fields": {"event": name, "environment": environment, **fields}}
