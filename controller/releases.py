"""Blue/green releases of production instances (local runtime).

A production instance has two colours. The live one serves the production
host: it is the instance's replicas and version. The other colour is either a
*preview* (deployed, reachable at `{service}.prerelease.{domain}`, not yet
live) or the *previous* live colour after a promote, kept running for
`scale_down_delay` so requests and WebSockets in flight on it finish and a
rollback is instant.

Promote and rollback swap the colours in one route-table version, so every
proxy switches at once. Which colour is live, and the other colour's version,
are kept in `state_dir/releases.json` (written atomically): a restarted
controller starts the live colour at its version and never leaves production
without one. A preview's processes die with the controller; after a restart
it shows with no replicas and `deploy` starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .runtimes.base import ReplicaLike
from .statefile import read_json, write_json_atomic

if TYPE_CHECKING:
    from .scaler import Instance, Scaler

log = logging.getLogger("wakegate.releases")

COLOURS = ("blue", "green")
PREVIEW = "preview"
PREVIOUS = "previous"


class ReleaseConflict(Exception):
    """Another release command for this service is under way; nothing was changed."""


class ReleaseRefused(Exception):
    """The release command cannot be done now; nothing was changed."""


def other_colour(colour: str) -> str:
    return COLOURS[1 - COLOURS.index(colour)]


@dataclass
class OtherColour:
    colour: str
    version: str
    role: str  # PREVIEW or PREVIOUS
    replicas: list[ReplicaLike] = field(default_factory=list)
    scale_down_at: float | None = None  # monotonic
    scale_down: asyncio.Task[None] | None = None


@dataclass
class Release:
    live: str = "blue"
    other: OtherColour | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class Releases:
    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler
        self.path = os.path.join(scaler.config.state_dir, "releases.json")
        self._saved: dict[str, Any] = read_json(self.path, {})
        self.by_key: dict[tuple[str, str], Release] = {}

    # --- state ---

    def of(self, inst: Instance) -> Release:
        release = self.by_key.get(inst.key)
        if release is None:
            saved = self._saved.get("/".join(inst.key)) or {}
            release = Release(live=saved.get("live", "blue")
                              if saved.get("live") in COLOURS else "blue")
            other = saved.get("other")
            if isinstance(other, dict) and other.get("version"):
                release.other = OtherColour(other_colour(release.live), str(other["version"]),
                                            str(other.get("role", PREVIEW)))
            self.by_key[inst.key] = release
        return release

    def _save(self) -> None:
        data = dict(self._saved)
        for key, release in self.by_key.items():
            other = release.other
            data["/".join(key)] = {
                "live": release.live,
                "other": None if other is None else {"version": other.version,
                                                     "role": other.role},
            }
        write_json_atomic(self.path, data)
        self._saved = data

    def preview_endpoints(self, inst: Instance) -> tuple[str, ...] | None:
        """What the prerelease host reaches: a ready preview, else None (the live colour)."""
        other = self.of(inst).other
        if other is not None and other.role == PREVIEW and other.replicas:
            return tuple(r.endpoint for r in other.replicas)
        return None

    def preview_version(self, inst: Instance) -> str | None:
        other = self.of(inst).other
        return other.version if other is not None and other.role == PREVIEW else None

    def replica_exited(self, inst: Instance, replica: ReplicaLike) -> bool:
        """A replica of the other colour died; True if it was one."""
        other = self.of(inst).other
        if other is None or replica not in other.replicas:
            return False
        other.replicas.remove(replica)
        self._scaler.publish(inst)
        return True

    # --- commands ---

    @contextlib.asynccontextmanager
    async def _exclusive(self, inst: Instance) -> AsyncIterator[Release]:
        """One release command per service at a time; a second one is refused, not queued."""
        release = self.of(inst)
        if release.lock.locked():
            raise ReleaseConflict(f"another release command for {inst.spec.service.name} is "
                                  "under way; retry when it is done")
        async with release.lock:
            yield release

    async def deploy(self, inst: Instance, version: str) -> dict[str, Any]:
        """Start `version` on the idle colour at production size; ready when this returns."""
        async with self._exclusive(inst) as release:
            other = release.other
            result = {"environment": inst.spec.environment.name,
                      "service": inst.spec.service.name, "version": version,
                      "colour": other_colour(release.live), "previous": inst.version}
            if other is not None and other.role == PREVIEW and other.version == version \
                    and other.replicas:
                return {**result, "changed": False}
            if other is None and inst.version == version:
                return {**result, "colour": release.live, "changed": False}
            await self._stop_other(release)
            size = max(len(inst.replicas), inst.spec.environment.min_replicas, 1)
            replicas = await self._scaler.runtime.start(inst.spec, version, size)
            release.other = OtherColour(other_colour(release.live), version, PREVIEW,
                                        list(replicas))
            self._save()
            self._scaler.publish(inst)
            log.info("%s: version %s ready on the %s colour (preview)", inst.name, version,
                     release.other.colour)
            return {**result, "changed": True}

    async def promote(self, inst: Instance) -> dict[str, Any]:
        async with self._exclusive(inst) as release:
            other = release.other
            if other is None or other.role != PREVIEW:
                raise ReleaseRefused("there is nothing to promote: deploy a version to "
                                     "production first (it goes to the preview colour)")
            if not other.replicas or any(r.exited.done() for r in other.replicas):
                raise ReleaseRefused(f"the preview colour ({other.version}) is not ready: "
                                     "run the deploy again")
            return self._swap(inst, release, "promoted")

    async def rollback(self, inst: Instance) -> dict[str, Any]:
        async with self._exclusive(inst) as release:
            other = release.other
            if other is None or other.role != PREVIOUS:
                raise ReleaseRefused("there is nothing to roll back to: no colour was live "
                                     "before the current one")
            return self._swap(inst, release, "rolled back")

    def _swap(self, inst: Instance, release: Release, verb: str) -> dict[str, Any]:
        """The switch: one route-table version; the old live colour becomes the previous one."""
        other = release.other
        assert other is not None
        old_colour, old_version, old_replicas = release.live, inst.version, list(inst.replicas)
        if other.scale_down is not None:
            other.scale_down.cancel()
        release.live = other.colour
        inst.replicas = list(other.replicas)
        inst.version = other.version
        delay = inst.spec.environment.scale_down_delay
        release.other = OtherColour(old_colour, old_version, PREVIOUS, old_replicas,
                                    scale_down_at=time.monotonic() + delay)
        self._scaler.versions.set(*inst.key, inst.version)
        self._save()
        if inst.replicas:
            inst.state = "ready"
            inst.ready_since = time.monotonic()
        else:
            # Rolled back to a colour already scaled down: held like a cold start.
            inst.state = "sleeping"
        self._scaler.publish(inst)
        if not inst.replicas:
            self._scaler.request_activation(inst.key)
        release.other.scale_down = asyncio.ensure_future(self._scale_down_later(inst, release))
        log.info("%s: %s to %s (%s colour); %s scales down in %gs", inst.name, verb,
                 inst.version, release.live, old_colour, delay)
        return {"environment": inst.spec.environment.name, "service": inst.spec.service.name,
                "live": release.live, "version": inst.version, "previous": old_version}

    async def _scale_down_later(self, inst: Instance, release: Release) -> None:
        other = release.other
        assert other is not None
        await asyncio.sleep(inst.spec.environment.scale_down_delay)
        if release.other is other and other.replicas:
            replicas, other.replicas = other.replicas, []
            self._scaler.publish(inst)
            await self._scaler.runtime.stop(replicas, inst.spec.service.stop_grace)
            log.info("%s: the %s colour (%s) is scaled down", inst.name, other.colour,
                     other.version)

    async def _stop_other(self, release: Release) -> None:
        other = release.other
        if other is None:
            return
        if other.scale_down is not None:
            other.scale_down.cancel()
        release.other = None
        if other.replicas:
            await self._scaler.runtime.stop(other.replicas, 5.0)

    def status(self, inst: Instance) -> dict[str, Any]:
        release = self.of(inst)
        now = time.monotonic()
        colours = {release.live: {"version": inst.version, "replicas": len(inst.replicas),
                                  "role": "live"}}
        other = release.other
        if other is not None:
            entry: dict[str, Any] = {"version": other.version, "replicas": len(other.replicas),
                                     "role": other.role}
            if other.role == PREVIOUS and other.replicas and other.scale_down_at is not None:
                entry["scale_down_in_seconds"] = round(max(other.scale_down_at - now, 0.0), 1)
            colours[other.colour] = entry
        return {"environment": inst.spec.environment.name, "service": inst.spec.service.name,
                "live": release.live, "colours": colours}

    def shutdown(self) -> None:
        for release in self.by_key.values():
            if release.other is not None and release.other.scale_down is not None:
                with contextlib.suppress(Exception):
                    release.other.scale_down.cancel()
