"""The local runtime's ephemeral environments: `state_dir/ephemeral.json`.

{"<name>": {"source": env, "access": "public"|"api_key", "created": epoch,
"expires": epoch, "versions": {"<service>": "<version>"}}}, written
atomically before the controller acts on a change, so that an environment and
its expiry survive a restart (its processes do not: it is asleep again after
one). A file that is not valid raises StateFileError when it is read and is
never written.
"""

from __future__ import annotations

import contextlib
import glob
import os
from typing import Any

from ...config import parse_version
from ...ephemeral_specs import ephemeral_name_problem
from ...model import EphemeralRecord
from ...names import is_environment_name, is_service_name
from ...spec import InstanceSpec
from ...statefile import Problems, describe, fields, is_epoch, read_state, show, write_json_atomic

EPHEMERAL_FILE = "ephemeral.json"  # under state_dir
_ACCESS = ("public", "api_key")


def check_ephemeral(problems: Problems, data: Any) -> None:
    """ephemeral.json's schema (above)."""
    if not isinstance(data, dict):
        problems.add("", f"must be an object mapping environment names to environments, got "
                     f"{describe(data)}")
        return
    seen: dict[str, str] = {}
    for name, saved in data.items():
        problem = ephemeral_name_problem(name)
        if problem is not None:
            problems.add(show(name) if not is_environment_name(name) else name,
                         f"this name {problem}")
            continue
        if name.lower() in seen:
            problems.add(name, f"the same environment as {seen[name.lower()]} (names ignore "
                         "case: their hosts are the same); keep one")
            continue
        seen[name.lower()] = name
        saved = fields(problems, name, saved, ("source", "access", "created", "expires",
                                               "versions"))
        if saved is None:
            continue
        if "source" in saved and not is_environment_name(saved["source"]):
            problems.add(f"{name}.source", f"{show(saved['source'])} is not an environment name")
        if "access" in saved and saved["access"] not in _ACCESS:
            problems.add(f"{name}.access", f"must be \"public\" or \"api_key\", got "
                         f"{describe(saved['access'])}")
        for when in ("created", "expires"):
            if when in saved and not is_epoch(saved[when]):
                problems.add(f"{name}.{when}", "must be epoch seconds (an integer), got "
                             f"{describe(saved[when])}")
        versions = saved.get("versions", {})
        if not isinstance(versions, dict):
            problems.add(f"{name}.versions", "must be an object mapping service to version, "
                         f"got {describe(versions)}")
            continue
        for service, version in versions.items():
            if not is_service_name(service):
                problems.add(f"{name}.versions.{show(service)}", "not a service name: a "
                             "lowercase DNS label (letters, digits, dashes)")
                continue
            try:
                parse_version(version)
            except ValueError as exc:
                problems.add(f"{name}.versions.{service}", str(exc))


def _record(name: str, saved: dict[str, Any]) -> EphemeralRecord:
    return EphemeralRecord(
        name=name, source=saved["source"], access=saved["access"],
        created=float(saved["created"]), expires=float(saved["expires"]),
        versions=tuple(sorted(saved["versions"].items())),
    )


def _saved(record: EphemeralRecord) -> dict[str, Any]:
    return {"source": record.source, "access": record.access, "created": int(record.created),
            "expires": int(record.expires), "versions": dict(record.versions)}


class LocalEphemeral:
    """runtimes.base.EphemeralStore on a file; the processes are the local runtime's."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, EPHEMERAL_FILE)
        self._logs = os.path.join(state_dir, "logs")  # the local runtime's log_path
        saved: dict[str, Any] = read_state(self.path, check_ephemeral, {})
        self._records = {name: _record(name, value) for name, value in saved.items()}

    def records(self) -> list[EphemeralRecord]:
        return list(self._records.values())

    def _write(self, records: dict[str, EphemeralRecord]) -> None:
        write_json_atomic(self.path, {name: _saved(r) for name, r in records.items()})
        self._records = records  # only once it is on disk

    async def create(self, record: EphemeralRecord, services: list[InstanceSpec]) -> None:
        # Nothing to make: its processes start when it is woken.
        self._write({**self._records, record.name: record})

    async def extend(self, name: str, expires: float) -> EphemeralRecord:
        record = self._records[name]
        updated = EphemeralRecord(record.name, record.source, record.access, record.created,
                                  expires, record.versions)
        self._write({**self._records, name: updated})
        return updated

    async def remove(self, name: str) -> None:
        # Its process logs too: a later environment of the same name starts a log of its own.
        for log in glob.glob(os.path.join(glob.escape(self._logs), f"{name}.*.log")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(log)
        if name in self._records:
            self._write({k: v for k, v in self._records.items() if k != name})
