"""An environment's prefix on Kubernetes, and the object names and image tags it gives.

The prefix of an environment is its namespace's label `wakegate.dev/prefix`
when set (an empty value: none), else the configured environment's `prefix`,
else the default of its kind (spec.DEFAULT_PREFIXES: `dev`, `stg`, `prod`).
With a prefix, a service's objects are named `{prefix}-{service}` (its
Deployment and Service; blue/green `{prefix}-{service}-blue|green`; its key
Secret `wakegate-keys-{prefix}-{service}`) and a version runs as the image tag
`{version}-{prefix}` (spec.image_tag). Names without the prefix are still
found, so a cluster set up before prefixes keeps working.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...model import COLOURS
from ...names import is_prefix
from ...spec import DEFAULT_PREFIXES, Environment

PREFIX_LABEL = "wakegate.dev/prefix"

__all__ = ["PREFIX_LABEL", "colour_names", "object_name", "prefix_of", "unprefixed",
           "version_of_tag"]


def prefix_of(namespace: dict[str, Any], kind: str, configured: Environment | None,
              warn: Callable[[str], None]) -> str:
    """The prefix of the environment this namespace holds (see the module's docstring)."""
    meta = namespace.get("metadata") or {}
    labels = meta.get("labels") or {}
    if PREFIX_LABEL in labels:
        value = labels[PREFIX_LABEL]
        if value == "" or is_prefix(value):
            return str(value)
        warn(f"namespace {meta.get('name')}: {PREFIX_LABEL}={value!r} is not 1-8 lowercase "
             "letters and digits; using the configured prefix")
    if configured is not None and configured.kind == kind:
        return configured.prefix  # the config's default is its kind's already; "" is none
    return DEFAULT_PREFIXES.get(kind, "")


def object_name(service: str, prefix: str) -> str:
    """The name of a service's Deployment and Service in an environment with this prefix."""
    return f"{prefix}-{service}" if prefix else service


def colour_names(service: str, prefix: str) -> list[dict[str, str]]:
    """The names blue/green Deployments may have, colour → name: prefixed first, then
    the names of a cluster set up before prefixes."""
    bases = [object_name(service, prefix)] + ([service] if prefix else [])
    return [{colour: f"{base}-{colour}" for colour in COLOURS} for base in bases]


def version_of_tag(tag: str, prefix: str) -> str:
    """The version an image tag runs: `1.0.0-prod` → `1.0.0` in an environment `prod`."""
    suffix = f"-{prefix}"
    if prefix and tag.endswith(suffix) and len(tag) > len(suffix):
        return tag[: -len(suffix)]
    return tag


def unprefixed(name: str, prefix: str) -> str:
    """An object's name without its environment's prefix (`prod-hello` → `hello`)."""
    head = f"{prefix}-"
    if prefix and name.startswith(head) and len(name) > len(head):
        return name[len(head):]
    return name
