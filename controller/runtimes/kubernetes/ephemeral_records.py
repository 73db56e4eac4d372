"""An ephemeral environment as its namespace: labels and annotations ↔ EphemeralRecord.

The namespace (named `wakegate-<name>-<5 random characters>`, so that a name
can be used again while the namespace of its previous life is still being
emptied) is labelled `wakegate.dev/environment: <name>` and
`wakegate.dev/kind: ephemeral`, and annotated:

- `wakegate.dev/source`: the environment it was made from;
- `wakegate.dev/access`: `public` or `api_key`;
- `wakegate.dev/created-at`, `wakegate.dev/expires-at`: RFC 3339 times in UTC,
  to the second (`2026-12-06T10:00:00Z`), as `kubectl get -o yaml` shows them;
- `wakegate.dev/versions`: `service=version` pairs, comma-separated.

Nothing else holds the record: a restarted controller reads it back from the
namespace cache. Pure functions; whatever cannot be read is said once (`warn`)
and the namespace is passed over (never served, never deleted by wakegate).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from ...model import EphemeralRecord
from ...names import is_dns_label, is_environment_name, is_version
from ...spec import EPHEMERAL

ENVIRONMENT_LABEL = "wakegate.dev/environment"
KIND_LABEL = "wakegate.dev/kind"
SOURCE_ANNOTATION = "wakegate.dev/source"
ACCESS_ANNOTATION = "wakegate.dev/access"
CREATED_ANNOTATION = "wakegate.dev/created-at"
EXPIRES_ANNOTATION = "wakegate.dev/expires-at"
VERSIONS_ANNOTATION = "wakegate.dev/versions"
_ACCESS = ("public", "api_key")

Obj = dict[str, Any]

__all__ = ["EXPIRES_ANNOTATION", "being_deleted", "expiry_annotations", "format_time",
           "is_ephemeral", "namespace_object", "record_of"]


def format_time(epoch: float) -> str:
    """RFC 3339 in UTC, to the second."""
    return dt.datetime.fromtimestamp(int(epoch), dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: str) -> float:
    when = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError("no time zone")
    return when.timestamp()


def being_deleted(obj: Obj) -> bool:
    """Deleted, and being emptied (metadata.deletionTimestamp): no environment any more."""
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def is_ephemeral(namespace: Obj) -> bool:
    labels = (namespace.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(KIND_LABEL) == EPHEMERAL)


def namespace_object(record: EphemeralRecord) -> Obj:
    """The namespace to create for `record` (its name made by the API server)."""
    if not is_dns_label(f"wakegate-{record.name.lower()}") or not record.name[-1].isalnum():
        # A label value must end with a letter or digit: the API server would refuse it.
        raise ValueError(f"{record.name!r} cannot be an environment on Kubernetes: the name "
                         "must end with a letter or a digit")
    return {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {
            "generateName": f"wakegate-{record.name.lower()}-",
            "labels": {ENVIRONMENT_LABEL: record.name, KIND_LABEL: EPHEMERAL},
            "annotations": {
                SOURCE_ANNOTATION: record.source,
                ACCESS_ANNOTATION: record.access,
                CREATED_ANNOTATION: format_time(record.created),
                EXPIRES_ANNOTATION: format_time(record.expires),
                VERSIONS_ANNOTATION: ",".join(f"{service}={version}"
                                              for service, version in record.versions),
            },
        },
    }


def expiry_annotations(expires: float) -> Obj:
    """A merge patch that moves the expiry."""
    return {"metadata": {"annotations": {EXPIRES_ANNOTATION: format_time(expires)}}}


def record_of(namespace: Obj, warn: Callable[[str], None]) -> EphemeralRecord | None:
    """The record an ephemeral environment's namespace holds, or None (said once)."""
    meta = namespace.get("metadata") or {}
    labels = meta.get("labels") or {}
    notes = meta.get("annotations") or {}
    where = f"namespace {meta.get('name')}"
    name = labels.get(ENVIRONMENT_LABEL, "")
    source = notes.get(SOURCE_ANNOTATION, "")
    access = notes.get(ACCESS_ANNOTATION, "")
    problem = None
    if not is_environment_name(name):
        problem = f"{ENVIRONMENT_LABEL}={name!r} is not an environment name"
    elif not is_environment_name(source):
        problem = f"{SOURCE_ANNOTATION}={source!r} is not an environment name"
    elif access not in _ACCESS:
        problem = f"{ACCESS_ANNOTATION}={access!r} is not public or api_key"
    times: dict[str, float] = {}
    for annotation in (CREATED_ANNOTATION, EXPIRES_ANNOTATION):
        if problem is None:
            try:
                times[annotation] = _parse_time(notes.get(annotation, ""))
            except ValueError:
                problem = (f"{annotation}={notes.get(annotation)!r} is not an RFC 3339 time "
                           "(2026-12-06T10:00:00Z)")
    versions: list[tuple[str, str]] = []
    for pair in (notes.get(VERSIONS_ANNOTATION) or "").split(","):
        service, _, version = pair.strip().partition("=")
        if problem is None and pair.strip() and not (is_dns_label(service)
                                                     and is_version(version)):
            problem = f"{VERSIONS_ANNOTATION}: {pair.strip()!r} is not service=version"
        versions.append((service, version))
    if problem is not None:
        warn(f"{where}: {problem}; not served as an ephemeral environment")
        return None
    return EphemeralRecord(
        name=name, source=source, access=access, created=times[CREATED_ANNOTATION],
        expires=times[EXPIRES_ANNOTATION],
        versions=tuple(sorted(v for v in versions if v[0])),
    )
