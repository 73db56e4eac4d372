"""Blue/green releases of production instances, on any runtime.

A production instance has two colours. The live one serves the production
host: it is the instance's replicas and version. The other colour is either a
*preview* (deployed, reachable at `{service}.prerelease.{domain}`, not yet
live) or the *previous* live colour after a switch, kept running for
`scale_down_delay` so requests and WebSockets in flight on it finish and a
rollback is instant.

Promote and rollback swap the colours in one route-table version, so every
proxy switches at once. Where the colours are kept is the runtime's
(`ColourStore`): the local runtime writes `state_dir/releases.json`
atomically (`LocalColours`); the Kubernetes runtime keeps them on the
`<service>-blue`/`<service>-green` Deployments. Either way the switch is
recorded before traffic moves, and a restarted controller never leaves
production without a live colour.

Every command is safe to repeat: a deploy of the version already on the
preview answers `changed: false`; a promote or rollback that already went
through is refused (nothing to promote, already rolled back) and changes
nothing, so a repeated rollback never switches back to the bad version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from .config import parse_version
from .events import event
from .runtimes.base import ReplicaLike
from .statefile import Problems, describe, fields, instances, read_state, show, write_json_atomic

if TYPE_CHECKING:
    from .scaler import Instance, Scaler


log = logging.getLogger("wakegate.releases")

COLOURS = ("blue", "green")
PREVIEW = "preview"
PREVIOUS = "previous"
PROMOTE = "promote"
ROLLBACK = "rollback"
RELEASES_FILE = "releases.json"  # under state_dir, local runtime


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
    last: str | None = None  # PROMOTE or ROLLBACK: the switch that made `live` live
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class ColourStore(Protocol):
    """Where a runtime keeps production's two colours, and how it runs the idle one."""

    def refused(self, inst: Instance) -> str | None:
        """Why this instance cannot have blue/green releases, or None."""

    def load(self, inst: Instance) -> Release:
        """The instance's release as last recorded (a controller restart resumes from it)."""

    def save(self, inst: Instance, release: Release) -> None:
        """Record the release after a change made in memory (no await: atomic for the loop)."""

    async def start(self, inst: Instance, colour: str, version: str, size: int,
                    running: list[ReplicaLike]) -> list[ReplicaLike]:
        """`version` on `colour` with `size` ready replicas (`running` already are)."""

    async def stop(self, inst: Instance, colour: str, replicas: list[ReplicaLike],
                   grace: float) -> None:
        """Scale `colour` to nothing."""

    async def switch(self, inst: Instance, release: Release, live: str, verb: str) -> None:
        """Record `live` as the live colour, before traffic moves; raise and nothing moved."""


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
    """The local runtime's colours: processes, and `state_dir/releases.json`.

    A preview's processes die with the controller; after a restart it shows
    with no replicas and `deploy` starts it again. A releases.json that is not
    valid raises StateFileError here and is never written.
    """

    def __init__(self, scaler: Scaler) -> None:
        self._scaler = scaler
        self.path = os.path.join(scaler.config.state_dir, RELEASES_FILE)
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
                    running: list[ReplicaLike]) -> list[ReplicaLike]:
        more = await self._scaler.runtime.start(inst.spec, version, size - len(running))
        return [*running, *more]

    async def stop(self, inst: Instance, colour: str, replicas: list[ReplicaLike],
                   grace: float) -> None:
        if replicas:
            await self._scaler.runtime.stop(replicas, grace)

    async def switch(self, inst: Instance, release: Release, live: str, verb: str) -> None:
        # The state after the swap, on disk before anything moves in memory.
        after = Release(live=live, last=verb,
                        other=OtherColour(release.live, inst.version, PREVIOUS))
        self.save(inst, after)


class Releases:
    def __init__(self, scaler: Scaler, colours: ColourStore) -> None:
        self._scaler = scaler
        self.colours = colours
        self.by_key: dict[tuple[str, str], Release] = {}

    # --- state ---

    def of(self, inst: Instance) -> Release:
        release = self.by_key.get(inst.key)
        if release is None:
            release = self.colours.load(inst)
            self.by_key[inst.key] = release
            other = release.other
            if other is not None and other.scale_down_at is not None:
                # Recorded by a controller that is gone: its scale-down is ours now.
                other.scale_down = asyncio.ensure_future(self._scale_down_later(inst, release))
        return release

    def forget(self, inst: Instance) -> None:
        release = self.by_key.pop(inst.key, None)
        if release is not None and release.other is not None and release.other.scale_down:
            release.other.scale_down.cancel()

    def preview_endpoints(self, inst: Instance) -> tuple[str, ...] | None:
        """What the prerelease host reaches: a ready preview, else None (the live colour)."""
        other = self.of(inst).other
        if other is not None and other.role == PREVIEW and other.replicas:
            return tuple(r.endpoint for r in other.replicas)
        return None

    def preview_version(self, inst: Instance) -> str | None:
        other = self.of(inst).other
        return other.version if other is not None and other.role == PREVIEW else None

    def replica_appeared(self, inst: Instance, colour: str, replica: ReplicaLike) -> None:
        """A ready replica of the other colour the runtime found (Kubernetes)."""
        other = self.of(inst).other
        if other is not None and other.colour == colour and replica not in other.replicas:
            other.replicas.append(replica)
            self._scaler.publish(inst)

    def replica_exited(self, inst: Instance, replica: ReplicaLike) -> bool:
        """A replica of the other colour died; True if it was one."""
        release = self.by_key.get(inst.key)
        other = release.other if release is not None else None
        if other is None or replica not in other.replicas:
            return False
        other.replicas.remove(replica)
        self._scaler.publish(inst)
        return True

    # --- commands ---

    @contextlib.asynccontextmanager
    async def _exclusive(self, inst: Instance) -> AsyncIterator[Release]:
        """One release command per service at a time; a second one is refused, not queued."""
        refused = self.colours.refused(inst)
        if refused is not None:
            raise ReleaseRefused(refused)
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
            colour = other_colour(release.live)
            result = {"environment": inst.spec.environment.name,
                      "service": inst.spec.service.name, "version": version,
                      "colour": colour, "previous": inst.version}
            size = max(len(inst.replicas), inst.spec.environment.min_replicas, 1)
            running: list[ReplicaLike] = []
            if other is not None and other.role == PREVIEW and other.version == version:
                running = [r for r in other.replicas if not r.exited.done()]
                if len(running) >= size:
                    return {**result, "changed": False}
                # A deploy that did not finish (timeout, controller restart): resumed.
            elif other is None and inst.version == version:
                return {**result, "colour": release.live, "changed": False}
            else:
                await self._stop_other(inst, release)
            replicas = await self.colours.start(inst, colour, version, size, running)
            release.other = OtherColour(colour, version, PREVIEW, list(replicas))
            self.colours.save(inst, release)
            self._scaler.publish(inst)
            log.info("%s: version %s ready on the %s colour (preview)", inst.name, version,
                     colour,
                     extra=event(inst.spec, "preview_ready", version=version, colour=colour))
            return {**result, "changed": True}

    async def promote(self, inst: Instance) -> dict[str, Any]:
        async with self._exclusive(inst) as release:
            other = release.other
            if other is not None and other.role == PREVIEW:
                if not other.replicas or any(r.exited.done() for r in other.replicas):
                    raise ReleaseRefused(f"the preview colour ({other.version}) is not ready: "
                                         "run the deploy again")
                return await self._swap(inst, release, PROMOTE)
            if release.last == PROMOTE:
                raise ReleaseRefused(f"there is nothing to promote: {inst.version} on the "
                                     f"{release.live} colour is live already (promoted)")
            raise ReleaseRefused("there is nothing to promote: deploy a version to "
                                 "production first (it goes to the preview colour)")

    async def rollback(self, inst: Instance) -> dict[str, Any]:
        async with self._exclusive(inst) as release:
            other = release.other
            if release.last == ROLLBACK:
                # A rollback repeated (after a timeout, say) must not switch back again.
                raise ReleaseRefused(f"already rolled back: {inst.version} on the "
                                     f"{release.live} colour is live")
            if other is not None and other.role == PREVIOUS:
                return await self._swap(inst, release, ROLLBACK)
            raise ReleaseRefused("there is nothing to roll back to: no colour was live "
                                 "before the current one")

    async def _swap(self, inst: Instance, release: Release, verb: str) -> dict[str, Any]:
        """The switch: one route-table version; the old live colour becomes the previous one."""
        # An activation under way (the live colour lost its replicas) finishes
        # first: what it starts belongs to the colour that is live now.
        async with inst.lock:
            return await self._swap_locked(inst, release, verb)

    async def _swap_locked(self, inst: Instance, release: Release, verb: str
                           ) -> dict[str, Any]:
        other = release.other
        assert other is not None
        old_colour, old_version, old_replicas = release.live, inst.version, list(inst.replicas)
        # Recorded first: if that fails, nothing has moved.
        await self.colours.switch(inst, release, other.colour, verb)
        # Replicas of the old colour found while the switch was being recorded.
        old_replicas += [r for r in inst.replicas if r not in old_replicas]
        if other.scale_down is not None:
            other.scale_down.cancel()
        release.live, release.last = other.colour, verb
        inst.replicas = list(other.replicas)
        inst.version = other.version
        inst.end_backoff()  # another version is live: it deserves a start at once
        delay = inst.spec.environment.scale_down_delay
        release.other = OtherColour(old_colour, old_version, PREVIOUS, old_replicas,
                                    scale_down_at=time.monotonic() + delay)
        if not self._scaler.runtime.versions_on_objects:
            self._scaler.versions.set(*inst.key, inst.version)
        if inst.replicas:
            inst.state = "ready"
            inst.ready_since = time.monotonic()
        else:
            # Switched to a colour already scaled down: held like a cold start.
            inst.state = "sleeping"
        self._scaler.publish(inst)
        if not inst.replicas:
            self._scaler.request_activation(inst.key)
        release.other.scale_down = asyncio.ensure_future(self._scale_down_later(inst, release))
        done = "promoted" if verb == PROMOTE else "rolled back"
        log.info("%s: %s to %s (%s colour); %s scales down in %gs", inst.name, done,
                 inst.version, release.live, old_colour, delay,
                 extra=event(inst.spec, "promoted" if verb == PROMOTE else "rolled_back",
                             version=inst.version, colour=release.live, previous=old_version))
        return {"environment": inst.spec.environment.name, "service": inst.spec.service.name,
                "live": release.live, "version": inst.version, "previous": old_version,
                "changed": True}

    async def _scale_down_later(self, inst: Instance, release: Release) -> None:
        other = release.other
        assert other is not None and other.scale_down_at is not None
        await asyncio.sleep(max(other.scale_down_at - time.monotonic(), 0.0))
        if release.other is not other:
            return
        replicas, other.replicas = other.replicas, []
        other.scale_down_at = None
        self._scaler.publish(inst)
        try:
            await self.colours.stop(inst, other.colour, replicas, inst.spec.service.stop_grace)
        except Exception as exc:  # the colour keeps running; status shows it
            log.warning("%s: the %s colour could not be scaled down: %s", inst.name,
                        other.colour, exc)
            return
        log.info("%s: the %s colour (%s) is scaled down", inst.name, other.colour,
                 other.version)

    async def _stop_other(self, inst: Instance, release: Release) -> None:
        other = release.other
        if other is None:
            return
        if other.scale_down is not None:
            other.scale_down.cancel()
        release.other = None
        self._scaler.publish(inst)
        await self.colours.stop(inst, other.colour, other.replicas, 5.0)

    def status(self, inst: Instance) -> dict[str, Any]:
        release = self.of(inst)
        now = time.monotonic()
        colours = {release.live: {"version": inst.version, "replicas": len(inst.replicas),
                                  "role": "live"}}
        other = release.other
        if other is not None:
            entry: dict[str, Any] = {"version": other.version, "replicas": len(other.replicas),
                                     "role": other.role}
            if other.role == PREVIOUS and other.scale_down_at is not None:
                entry["scale_down_in_seconds"] = round(max(other.scale_down_at - now, 0.0), 1)
            colours[other.colour] = entry
        return {"environment": inst.spec.environment.name, "service": inst.spec.service.name,
                "live": release.live, "last": release.last, "colours": colours}

    def shutdown(self) -> None:
        for release in self.by_key.values():
            if release.other is not None and release.other.scale_down is not None:
                with contextlib.suppress(Exception):
                    release.other.scale_down.cancel()
