"""The ports between the controller and a runtime, whichever one actually starts things.

Three directions, each a Protocol that says exactly what crosses it:

- `Runtime`: what the scaler asks of a platform (start and stop replicas, where
  versions and API keys are kept, production's colours);
- `ColourStore`: where a runtime keeps production's two colours, and how it
  runs the idle one (the release commands use it);
- `RuntimeEvents`: the callbacks a runtime makes into the controller (the
  scaler implements them), given to it when it opens.

Only the model sits below: a runtime never imports the scaler or the release
commands, and they never import a runtime (the composition root picks one,
see runtimes/__init__.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ..keys import KeyInfo
from ..model import EphemeralRecord, Instance, Key, Release, Replica
from ..spec import Config, InstanceSpec

__all__ = ["ColourStore", "EphemeralStore", "KeyStore", "Runtime", "RuntimeEvents",
           "StartFailed"]


class StartFailed(Exception):
    pass


class RuntimeEvents(Protocol):
    """What a runtime tells the controller (all from the event loop, none awaited)."""

    def sync_instances(self, specs: list[InstanceSpec], stop_removed: bool = True) -> None:
        """The instances are exactly `specs` now (Kubernetes: as discovered)."""

    def replica_appeared(self, key: Key, replica: Replica, active_at: float | None = None
                         ) -> None:
        """A ready replica the scaler did not start; `active_at`: last known activity."""

    def colour_replica_appeared(self, key: Key, colour: str, replica: Replica) -> None:
        """A ready replica of a production instance's idle colour."""

    def replica_exited(self, key: Key, replica: Replica, code: int) -> None:
        """A replica that was serving is gone."""

    def keys_changed(self, key: Key) -> None:
        """The instance's API keys changed (made or revoked elsewhere)."""

    def running_activity(self, key: Key) -> tuple[int, float] | None:
        """(requests in flight, monotonic last activity) of an instance with replicas, else
        None."""

    def stop_acting(self) -> None:
        """Another controller may act from now on (Kubernetes: the Lease was lost)."""


class KeyStore(Protocol):
    """Where API key digests are kept (local: keys.json; Kubernetes: a Secret per instance)."""

    def hashes(self, environment: str, service: str) -> tuple[bytes, ...]: ...

    def has_key(self, environment: str, service: str) -> bool: ...

    def list(self) -> list[KeyInfo]: ...

    def note_used(self, uses: Mapping[str, float]) -> None: ...

    def flush(self) -> None: ...

    async def create_async(self, environment: str, service: str) -> str:
        """A new key, its digest stored before the key is returned."""

    async def revoke_async(self, ident: str) -> Key | None:
        """Remove the key with this id everywhere it is stored; one (environment, service) it
        was for, None if unknown."""

    async def create_for_environment_async(self, environment: str,
                                           services: list[str]) -> str:
        """One new key valid for every one of these services of the environment (an
        ephemeral environment's key), its digest stored for each before it is returned."""

    def forget_environment(self, environment: str) -> None:
        """Every key of the environment is gone (it was deleted)."""


class EphemeralStore(Protocol):
    """Where a runtime keeps the ephemeral environments, and what it makes for them."""

    def records(self) -> list[EphemeralRecord]:
        """Every ephemeral environment known now (Kubernetes: from the namespace cache)."""

    async def create(self, record: EphemeralRecord, services: list[InstanceSpec]) -> None:
        """Keep `record`, and make what its `services` (specs in the new environment, each
        at its version) need to run, asleep (Kubernetes: the namespace, and copies of the
        source's Deployments and Services at 0 replicas). On failure nothing is left."""

    async def extend(self, name: str, expires: float) -> EphemeralRecord:
        """The environment now expires at `expires` (epoch seconds); the updated record."""

    async def remove(self, name: str) -> None:
        """Everything of it is gone from the platform (Kubernetes: the namespace deleted)."""


class ColourStore(Protocol):
    """Where a runtime keeps production's two colours, and how it runs the idle one."""

    def refused(self, inst: Instance) -> str | None:
        """Why this instance cannot have blue/green releases, or None."""

    def load(self, inst: Instance) -> Release:
        """The instance's release as last recorded (a controller restart resumes from it)."""

    def save(self, inst: Instance, release: Release) -> None:
        """Record the release after a change made in memory (no await: atomic for the loop)."""

    async def start(self, inst: Instance, colour: str, version: str, size: int,
                    running: list[Replica]) -> list[Replica]:
        """`version` on `colour` with `size` ready replicas (`running` already are)."""

    async def stop(self, inst: Instance, colour: str, replicas: list[Replica],
                   grace: float) -> None:
        """Scale `colour` to nothing."""

    async def switch(self, inst: Instance, release: Release, live: str, verb: str) -> None:
        """Record `live` as the live colour, before traffic moves; raise and nothing moved."""


class Runtime(Protocol):
    # True when the platform restarts dead replicas itself (Kubernetes):
    # the scaler then never restarts an always-on instance on its own.
    self_healing: bool
    # True when an instance's version is kept on the platform's objects
    # (Kubernetes) rather than in wakegate's state_dir.
    versions_on_objects: bool
    # Where this platform keeps API key digests.
    keys: KeyStore
    # Where this platform keeps production's two colours.
    colours: ColourStore
    # Where this platform keeps the ephemeral environments.
    ephemeral: EphemeralStore

    async def open(self, events: RuntimeEvents) -> None:
        """Connect and learn the current state, telling `events` from now on; returns when the
        scaler may act."""

    async def start(self, inst: InstanceSpec, version: str, count: int) -> list[Replica]:
        """`count` more ready replicas, or StartFailed with none left behind.

        The replicas already running keep running and serving: this is how an instance
        wakes (from none) and how it scales up by load (controller/scaling.py), and for a
        production instance it adds to the live colour."""

    async def stop(self, replicas: list[Replica], grace: float) -> None:
        """Stop exactly these replicas (asked to stop, killed after `grace`); the others keep
        running. Scaling down by load stops one replica that is already out of the route
        table: the platform must remove that one, not any other."""

    async def set_version(self, inst: InstanceSpec, version: str) -> None:
        """Versions on objects only: point the instance at `version`."""

    def config_changed(self, config: Config) -> None:
        """An applied config (versions on objects: the instances are rediscovered with it)."""

    async def shutdown(self, grace: float) -> None: ...

    def kill_all_now(self) -> None:
        """Last resort on the way out: no await, no grace."""

    def log_path(self, inst: InstanceSpec) -> str: ...

    def autoscaled_elsewhere(self, inst: InstanceSpec) -> bool:
        """True when something else scales this instance by load (Kubernetes: an HPA targets
        its Deployment): the scaler then leaves its replica count alone, wakes and sleeps
        aside."""
