"""The version commands, on any runtime: deploy, promote, and production's blue/green releases.

Below the scaler: the commands act on the model and through the ports
(runtimes/base.py), and make a change known through the scaler's `publish`
(`StateMachine`), so neither imports the other's internals.

Outside production a deploy replaces the instance's replicas in place (new
ones first) and `promote` copies the private version to the demo instance.
A production instance has two colours. The live one serves the production
host: it is the instance's replicas and version. The other colour is either a
*preview* (deployed, reachable at `{service}.prerelease.{domain}`, not yet
live) or the *previous* live colour after a switch, kept running for
`scale_down_delay` so requests and WebSockets in flight on it finish and a
rollback is instant.

Promote and rollback swap the colours in one route-table version, so every
proxy switches at once. A promote first scales the preview to as many ready
replicas as the live colour has (scaling.py may have scaled it up by load),
so the switch does not overload it; then the new live colour scales by load.
Where the colours are kept is the runtime's (`ColourStore`): the local
runtime writes `state_dir/releases.json` atomically (runtimes/local/colours.py);
the Kubernetes runtime keeps them on the `<service>-blue`/`<service>-green`
Deployments. Either way the switch is
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
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from .events import event
from .model import (
    PREVIEW,
    PREVIOUS,
    PROMOTE,
    READY,
    ROLLBACK,
    SLEEPING,
    Instance,
    Key,
    OtherColour,
    Release,
    Replica,
    other_colour,
)
from .runtimes.base import Runtime
from .spec import image_tag
from .versions import VersionStore

log = logging.getLogger("wakegate.releases")


class ReleaseConflict(Exception):
    """Another release command for this service is under way; nothing was changed."""


class ReleaseRefused(Exception):
    """The release command cannot be done now; nothing was changed."""


class DeployRefused(Exception):
    """The deploy cannot be done as asked; nothing was changed."""


class StateMachine(Protocol):
    """What the commands need of the scaler: the instances, and how a change is made known."""

    instances: dict[Key, Instance]

    def publish(self) -> None:
        """Every proxy gets a route table with the change, now."""

    def request_activation(self, key: Key) -> None:
        """Start the instance (again) if it has no replicas."""


class Releases:
    """Versions: deploy anywhere, promote private → demo, and production's blue/green."""

    def __init__(self, machine: StateMachine, runtime: Runtime, versions: VersionStore) -> None:
        self._machine = machine
        self._runtime = runtime
        self.colours = runtime.colours
        self._versions = versions

    # --- state ---

    def of(self, inst: Instance) -> Release:
        release = inst.release
        if release is None:
            release = inst.release = self.colours.load(inst)
            other = release.other
            if other is not None and other.scale_down_at is not None:
                # Recorded by a controller that is gone: its scale-down is ours now.
                other.scale_down = asyncio.ensure_future(self._scale_down_later(inst, release))
        return release

    def forget(self, inst: Instance) -> None:
        """The instance is gone (or the controller stops): no scale-down of its colours."""
        other = inst.release.other if inst.release is not None else None
        if other is not None and other.scale_down is not None:
            other.scale_down.cancel()

    def replica_appeared(self, inst: Instance, colour: str, replica: Replica) -> None:
        """A ready replica of the other colour the runtime found (Kubernetes)."""
        other = self.of(inst).other
        if other is not None and other.colour == colour and replica not in other.replicas:
            other.replicas.append(replica)
            self._machine.publish()

    def replica_exited(self, inst: Instance, replica: Replica) -> bool:
        """A replica of the other colour died; True if it was one."""
        other = inst.release.other if inst.release is not None else None
        if other is None or replica not in other.replicas:
            return False
        other.replicas.remove(replica)
        self._machine.publish()
        return True

    # --- instances by kind ---

    def _of_kind(self, service: str, kind: str) -> Instance | None:
        """The service's instance in an environment of that kind; LookupError if no service."""
        found = [i for i in self._machine.instances.values() if i.spec.service.name == service]
        if not found:
            raise LookupError(f"there is no service {service}")
        return next((i for i in found if i.spec.environment.kind == kind), None)

    def production_instance(self, service: str) -> Instance:
        inst = self._of_kind(service, "production")
        if inst is None:
            raise ReleaseRefused(f"{service} does not run in a production environment")
        return inst

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

    async def deploy(self, environment: str, service: str, version: str) -> dict[str, Any]:
        """Make an instance run `version`; safe to repeat.

        Production: the new version goes to the idle colour (a preview) and
        goes live with a promote. Elsewhere a sleeping instance stays asleep
        and wakes with it; a running one gets new replicas of it first, and
        only once they are ready does the route switch and the old ones stop,
        so nothing is refused meanwhile. If the new version does not start,
        the old one keeps serving and nothing changes.
        """
        inst = self._machine.instances.get((environment, service))
        if inst is None:
            raise LookupError(f"there is no instance {environment}/{service}")
        kind = inst.spec.environment.kind
        if kind == "prerelease":
            raise DeployRefused(f"{environment} is a prerelease environment: deploy to "
                                "production, whose new versions go to the preview colour")
        if kind == "production":
            return await self._deploy_preview(inst, version)
        async with inst.lock:
            previous = inst.version
            if previous == version:
                return {"environment": environment, "service": service, "version": version,
                        "previous": previous, "changed": False}
            inst.end_backoff()  # a new version deserves a start at once
            old: list[Replica] = []
            if self._runtime.versions_on_objects:
                await self._runtime.set_version(inst.spec, version)
            else:
                old = list(inst.replicas)
                # New replicas first: a start failure raises here, with nothing changed.
                new = await self._runtime.start(inst.spec, version, len(old)) if old else []
                self._versions.set(environment, service, version)
                inst.replicas = [*new, *(r for r in inst.replicas if r not in old)]
                if new:
                    inst.ready_since = time.monotonic()
            inst.version = version
            self._machine.publish()  # the switch: from here on requests go to the new ones
            if old:
                await self._runtime.stop(old, inst.spec.service.stop_grace)
        log.info("%s: version %s (was %s)", inst.name, version, previous,
                 extra=event(inst.spec, "deployed", version=version, previous=previous))
        if not inst.spec.environment.sleeps and not inst.replicas:
            self._machine.request_activation(inst.key)  # always on, down (crash back-off)
        return {"environment": environment, "service": service, "version": version,
                "previous": previous, "changed": True}

    async def promote_private(self, service: str) -> dict[str, Any]:
        """The private version becomes the demo (public) version."""
        private, demo = self._of_kind(service, "private"), self._of_kind(service, "demo")
        if private is None or demo is None:
            raise DeployRefused(f"{service} needs both a private and a demo instance to promote")
        return await self.deploy(demo.spec.environment.name, service, private.version)

    async def _deploy_preview(self, inst: Instance, version: str) -> dict[str, Any]:
        """Start `version` on the idle colour at production size; ready when this returns."""
        async with self._exclusive(inst) as release:
            other = release.other
            colour = other_colour(release.live)
            result = {"environment": inst.spec.environment.name,
                      "service": inst.spec.service.name, "version": version,
                      "colour": colour, "previous": inst.version}
            size = max(len(inst.replicas), inst.spec.environment.min_replicas, 1)
            running: list[Replica] = []
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
            self._machine.publish()
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
                await self._scale_preview(inst, other)
                return await self._swap(inst, release, PROMOTE)
            if release.last == PROMOTE:
                raise ReleaseRefused(f"there is nothing to promote: {inst.version} on the "
                                     f"{release.live} colour is live already (promoted)")
            raise ReleaseRefused("there is nothing to promote: deploy a version to "
                                 "production first (it goes to the preview colour)")

    async def _scale_preview(self, inst: Instance, other: OtherColour) -> None:
        """The preview gets as many ready replicas as the live colour has now (scaled up by
        load since the deploy, say), so that the switch does not overload it."""
        async with inst.lock:  # a step up of the live colour under way counts
            size = len(inst.replicas)
        if len(other.replicas) >= size:
            return
        try:
            other.replicas = await self.colours.start(inst, other.colour, other.version, size,
                                                      list(other.replicas))
        except Exception as exc:
            raise ReleaseRefused(f"the preview colour ({other.version}) could not be scaled "
                                 f"to the live colour's {size} replicas: {exc}") from exc
        self._machine.publish()
        log.info("%s: the %s colour (preview) scaled to %d replicas", inst.name, other.colour,
                 size, extra=event(inst.spec, "preview_scaled", replicas=size))

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
        if not self._runtime.versions_on_objects:
            self._versions.set(*inst.key, inst.version)
        if inst.replicas:
            inst.state = READY
            inst.ready_since = time.monotonic()
        else:
            # Switched to a colour already scaled down: held like a cold start.
            inst.state = SLEEPING
        self._machine.publish()
        if not inst.replicas:
            self._machine.request_activation(inst.key)
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
        self._machine.publish()
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
        self._machine.publish()
        await self.colours.stop(inst, other.colour, other.replicas, 5.0)

    def status(self, inst: Instance) -> dict[str, Any]:
        release = self.of(inst)
        now = time.monotonic()
        prefix = inst.spec.environment.prefix
        colours = {release.live: {"version": inst.version, "replicas": len(inst.replicas),
                                  "role": "live", "tag": image_tag(inst.version, prefix)}}
        other = release.other
        if other is not None:
            entry: dict[str, Any] = {"version": other.version, "replicas": len(other.replicas),
                                     "role": other.role, "tag": image_tag(other.version, prefix)}
            if other.role == PREVIOUS and other.scale_down_at is not None:
                entry["scale_down_in_seconds"] = round(max(other.scale_down_at - now, 0.0), 1)
            colours[other.colour] = entry
        return {"environment": inst.spec.environment.name, "service": inst.spec.service.name,
                "live": release.live, "last": release.last, "colours": colours}
