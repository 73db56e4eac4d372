"""The local runtime's production colours: processes, and `state_dir/releases.json`.

A preview's processes die with the controller; after a restart it shows with
no replicas and `deploy` starts it again. releases.json is written atomically
before anything moves in memory, so a restarted controller resumes from the
last recorded switch; one that is not valid raises StateFileError when it is
read and is never written.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

from ...config import parse_version
from ...model import (
    COLOURS,
    PREVIEW,
    PREVIOUS,
    PROMOTE,
    ROLLBACK,
    Instance,
    OtherColour,
    Release,
    Replica,
    other_colour,
)
from ...spec import InstanceSpec
from ...statefile import Problems, describe, fields, instances, read_state, show, write_json_atomic

RELEASES_FILE = "releases.json"  # under state_dir


class Processes(Protocol):
    """What the colours need of the local runtime: start and stop replicas."""

    async def start(self, inst: InstanceSpec, version: str, count: int) -> list[Replica]: ...

    async def stop(self, replicas: list[Replica], grace: float) -> None: ...


def check_releases(problems: Problems, data: Any) -> None:
    """releases.json's schema: {"<environment>/<service>": {"live": colour, "last": verb or
    null, "other": null or {"version": version, "role": role}}}; last and other may be left
    out (null)."""
    for name, saved in instances(problems, data, "a release"):
        saved = fields(problems, name, saved, ("live",), ("last", "other"))
        if saved is None:
            continue
        # A colour read wrong would put the wrong version live at the next switch.
        if "live" in saved and saved["live"] not in COLOURS:
            problems.add(f"{name}.live", f"{show(saved['live'])} is not a colour: blue or green")
        if saved.get("last") not in (PROMOTE, ROLLBACK, None):
            problems.add(f"{name}.last", f'must be "{PROMOTE}", "{ROLLBACK}" or null, got '
                         f"{describe(saved['last'])}")
        other = saved.get("other")
        if other is None:
            continue
        other = fields(problems, f"{name}.other", other, ("version", "role"))
        if other is None:
            continue
        if "version" in other:
            try:
                parse_version(other["version"])
            except ValueError as exc:
                problems.add(f"{name}.other.version", str(exc))
        if "role" in other and other["role"] not in (PREVIEW, PREVIOUS):
            problems.add(f"{name}.other.role", f'must be "{PREVIEW}" or "{PREVIOUS}", got '
                         f"{describe(other['role'])}")


class LocalColours:
    """The colour store of the local runtime (see runtimes.base.ColourStore)."""

    def __init__(self, processes: Processes, state_dir: str) -> None:
        self._processes = processes
        self.path = os.path.join(state_dir, RELEASES_FILE)
        self._saved: dict[str, Any] = read_state(self.path, check_releases, {})

    def refused(self, inst: Instance) -> str | None:
        return None

    def load(self, inst: Instance) -> Release:
        saved = self._saved.get("/".join(inst.key))
        if saved is None:
            return Release()  # blue is live until the first switch
        release = Release(live=saved["live"], last=saved.get("last"))
        other = saved.get("other")
        if other is not None:
            release.other = OtherColour(other_colour(release.live), other["version"],
                                        other["role"])
        return release

    def save(self, inst: Instance, release: Release) -> None:
        other = release.other
        data = dict(self._saved)
        data["/".join(inst.key)] = {
            "live": release.live, "last": release.last,
            "other": None if other is None else {"version": other.version, "role": other.role},
        }
        write_json_atomic(self.path, data)
        self._saved = data

    async def start(self, inst: Instance, colour: str, version: str, size: int,
                    running: list[Replica]) -> list[Replica]:
        more = await self._processes.start(inst.spec, version, size - len(running))
        return [*running, *more]

    async def stop(self, inst: Instance, colour: str, replicas: list[Replica],
                   grace: float) -> None:
        if replicas:
            await self._processes.stop(replicas, grace)

    async def switch(self, inst: Instance, release: Release, live: str, verb: str) -> None:
        # The state after the swap, on disk before anything moves in memory.
        after = Release(live=live, last=verb,
                        other=OtherColour(release.live, inst.version, PREVIOUS))
        self.save(inst, after)
