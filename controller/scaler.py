"""The instance state machine: waking, replicas found and lost, the set of instances.

Every change of an instance's state is published to the proxies as a new
route-table version (routes.py derives it from the model). Start and stop of
one instance are serialised by its lock, so there is one activation at a time
however many requests wait; when an idle instance goes to sleep is sleep.py's,
and how many replicas a running one has under load is scaling.py's.

The scaler is given its runtime (the composition root picks it, see
runtimes/__init__.py) and is the runtime's `RuntimeEvents`: what the runtime
finds (replicas, instances, keys) comes back through those callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from .dependencies import dependencies
from .ephemeral_specs import ephemeral_specs
from .events import event
from .model import (
    READY,
    SLEEPING,
    STABLE_AFTER,
    STARTING,
    ActivitySource,
    Instance,
    Key,
    Replica,
)
from .releases import Releases
from .routes import RouteBoard
from .runtimes.base import KeyStore, Runtime
from .scaling import LoadScaler
from .sleep import Activity, Sleeper
from .spec import EPHEMERAL, Config, InstanceSpec, RouteTable
from .status import status_rows
from .versions import VersionStore

__all__ = ["Instance", "Scaler"]

log = logging.getLogger("wakegate.controller")

_RESTART_DELAY = 0.5  # an always-on instance that lost its replicas starts again after this


class Scaler:
    """The instances and their state; implements runtimes.base.RuntimeEvents."""

    def __init__(self, config: Config, runtime: Runtime,
                 on_scale: Callable[[Instance, str], None]) -> None:
        self.config = config
        self.runtime = runtime
        self.keys: KeyStore = runtime.keys
        self._on_scale = on_scale
        # False until the runtime is open (Kubernetes: leader elected and synced).
        self.acting = False
        self._pending: set[Key] = set()
        self.versions = VersionStore(config.state_dir)
        self.releases = Releases(self, runtime, self.versions)
        self.instances: dict[Key, Instance] = {}
        # Environments on their way out (take_environment): never instances again meanwhile.
        self.removing: set[str] = set()
        for spec in self.wanted_specs(config):
            self.instances[spec.key] = self._new_instance(spec)
        self._routes = RouteBoard(lambda env, svc: self.config.host_of(env, svc),
                                  self.keys.hashes)
        # (requests in flight on all proxies, last active) of an instance
        self.activity = Activity()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        self._sleeper = Sleeper(self.instances, self.activity, self.publish, runtime.stop,
                                on_scale)
        self._load = LoadScaler(self.instances, self.activity, self.publish, runtime, on_scale)
        self.publish()

    # --- the set of instances (config, cluster discovery, apply) ---

    def _new_instance(self, spec: InstanceSpec) -> Instance:
        version = spec.service.version
        if not self.runtime.versions_on_objects:
            version = self.versions.initial(spec, self.config.environments)
        return Instance(spec, self.config.host_of(*spec.key), version)

    def sync_instances(self, specs: list[InstanceSpec], stop_removed: bool = True) -> None:
        """Make the instances exactly `specs`: new ones appear asleep, gone ones go away.

        A changed spec (idle timeout, access, ...) takes effect at once. A
        removed instance's route disappears, so its held requests get 404.
        """
        wanted = {spec.key: spec for spec in specs if spec.environment.name not in self.removing}
        for key, spec in wanted.items():
            inst = self.instances.get(key)
            if inst is None:
                inst = self._new_instance(spec)
                self.instances[key] = inst
                log.info("%s appeared", inst.name)
                if self.acting and not spec.environment.sleeps:
                    self.request_activation(key)
            elif inst.spec != spec:
                inst.spec = spec
                if self.runtime.versions_on_objects:
                    inst.version = spec.service.version
        for key in [k for k in self.instances if k not in wanted]:
            inst = self.instances.pop(key)
            log.info("%s was removed", inst.name)
            self.releases.forget(inst)
            replicas, inst.replicas = inst.replicas, []
            if stop_removed and replicas:
                self._spawn(self.runtime.stop(replicas, inst.spec.service.stop_grace))
        self.publish()

    def replica_appeared(self, key: Key, replica: Replica, active_at: float | None = None) -> None:
        """A ready replica the scaler did not start (Kubernetes: scaled by someone else).

        `active_at` is the instance's last known activity (monotonic), for
        replicas found when a controller starts.
        """
        inst = self.instances.get(key)
        if inst is None:
            return
        inst.replicas.append(replica)
        if active_at is not None:
            inst.activity_floor = active_at
        if inst.state in (SLEEPING, STARTING) and not inst.lock.locked():
            inst.became_ready(active_at)
            log.info("%s is ready (%d replica%s found)", inst.name, len(inst.replicas),
                     "" if len(inst.replicas) == 1 else "s",
                     extra=event(inst.spec, "found_ready", replicas=len(inst.replicas)))
        self.publish()
        self._on_scale(inst, "up")

    def colour_replica_appeared(self, key: Key, colour: str, replica: Replica) -> None:
        """A ready replica of a production instance's idle colour (Kubernetes)."""
        inst = self.instances.get(key)
        if inst is not None:
            self.releases.replica_appeared(inst, colour, replica)

    def stop_acting(self) -> None:
        """Another controller may act from now on: nothing is started or stopped here."""
        self.acting = False

    # --- route table ---

    def subscribe(self, apply: Callable[[RouteTable], None]) -> None:
        self._routes.subscribe(apply)

    def add_activity_source(self, source: ActivitySource) -> None:
        self.activity.add_source(source)

    def publish(self) -> None:
        """Make the state known everywhere: every subscribed proxy gets the new table now."""
        for inst in self.instances.values():
            if inst.spec.environment.kind == "production":
                self.releases.of(inst)  # its colours, for the prerelease route
        self._routes.publish(self.instances.values())
        self._sleeper.poke()

    def keys_changed(self, key: Key) -> None:
        if key in self.instances:
            self.publish()

    async def create_key(self, environment: str, service: str) -> str:
        """A new API key for an instance, stored (as a digest) before it is returned."""
        key = await self.keys.create_async(environment, service)
        self.keys_changed((environment, service))
        return key

    async def revoke_key(self, ident: str) -> Key | None:
        """Revoke the key with this id everywhere; the (environment, service) it was for."""
        found = await self.keys.revoke_async(ident)
        if found is not None:
            self.keys_changed(found)  # every proxy gets a table without it, now
        return found

    # --- activity ---

    def running_activity(self, key: Key) -> tuple[int, float] | None:
        """`activity` of an instance with replicas; None when it has none (or is unknown)."""
        inst = self.instances.get(key)
        if inst is None or not inst.replicas:
            return None
        return self.activity(inst)

    # --- waking ---

    def route_instance(self, key: Key) -> Instance | None:
        """The instance a route's key stands for (a prerelease route: its production one)."""
        return self.instances.get(self._routes.target(key))

    def request_activation(self, key: Key) -> None:
        """Wake the instance a route belongs to, and (in parallel, none waited for) what its
        service depends on in its environment; held requests go on once it is ready."""
        inst = self.instances.get(self._routes.target(key))
        if inst is None or self._closing:
            return
        if not self.acting:
            # Before the runtime is open (Kubernetes: not the leader yet):
            # remembered, and done as soon as the scaler may act.
            self._pending.add(key)
            return
        for woken in (inst, *dependencies(self.instances, inst.key)):
            self._wake(woken)

    def _wake(self, inst: Instance) -> None:
        """One activation task for the instance, unless it is up, waking, or backing off."""
        if inst.state == READY and len(inst.replicas) >= self._desired(inst):
            return
        if inst.activation is not None and not inst.activation.done():
            return
        if inst.backoff_left() > 0:
            return  # crash back-off: no process is started; the route says how long
        inst.activation = self._spawn(self._activate(inst))

    def _desired(self, inst: Instance) -> int:
        return max(inst.spec.environment.min_replicas, 1)

    async def _activate(self, inst: Instance) -> None:
        async with inst.lock:
            missing = self._desired(inst) - len(inst.replicas)
            if self._closing or (inst.state == READY and missing <= 0):
                return
            if not inst.replicas:
                inst.state = STARTING
                self.publish()
            started = time.monotonic()
            try:
                new = await self.runtime.start(inst.spec, inst.version, missing)
            except Exception as exc:  # StartFailed, or the platform's own failure
                inst.failures += 1
                inst.error = str(exc) or type(exc).__name__
                backoff = inst.start_failed(time.monotonic())
                if inst.replicas:
                    # Some replicas serve (a partial start): run degraded, not stuck.
                    inst.state = READY
                if not inst.replicas:
                    # Held requests see the failure count go up and get 503;
                    # the next request starts a fresh attempt.
                    inst.state = SLEEPING
                self.publish()
                if backoff:
                    log.error("activation of %s failed (%d in a row): %s; no start for %gs "
                              "(crash back-off)", inst.name, inst.failures_in_a_row, exc,
                              backoff, extra=event(inst.spec, "activation_failed",
                                                   error=str(exc), backoff_seconds=backoff))
                else:
                    log.error("activation of %s failed: %s", inst.name, exc,
                              extra=event(inst.spec, "activation_failed", error=str(exc)))
                if not inst.spec.environment.sleeps and not self.runtime.self_healing:
                    self._restart_later(inst)
                return
            if self.instances.get(inst.key) is not inst:
                await self._stop_orphans(inst, new)
                return
            # A replica that died between ready and here is already gone.
            inst.replicas.extend(r for r in new if not r.exited.done())
            if not inst.replicas:
                inst.state = SLEEPING
                self.publish()
                return
            inst.became_ready()
            # Requests may go again; the failed starts in a row end only once a replica
            # stays up (replica_exited, failed_starts).
            inst.backoff_until = 0.0
            self.publish()
            self._on_scale(inst, "up")
            log.info(
                "woke %s (version %s, %d replica%s) in %.0f ms",
                inst.name, inst.version, len(inst.replicas),
                "" if len(inst.replicas) == 1 else "s", (time.monotonic() - started) * 1000,
                extra=event(inst.spec, "woke", version=inst.version, replicas=len(inst.replicas),
                            duration_ms=round((time.monotonic() - started) * 1000, 1)),
            )

    async def _stop_orphans(self, inst: Instance, new: list[Replica]) -> None:
        """Removed while it started (apply, env delete): nothing it started is left running."""
        try:
            await self.runtime.stop(new, inst.spec.service.stop_grace)
        except Exception as exc:  # the platform's object may be gone with it
            log.warning("%s was removed while it started; stopping failed: %s", inst.name, exc)

    def _restart_later(self, inst: Instance) -> None:
        """Start an always-on instance again shortly, or when its crash back-off ends."""

        async def later() -> None:
            await asyncio.sleep(_RESTART_DELAY)
            while (left := inst.backoff_left()) > 0:
                await asyncio.sleep(left)
            self.request_activation(inst.key)

        self._spawn(later())

    def replica_exited(self, key: Key, replica: Replica, code: int) -> None:
        inst = self.instances.get(key)
        if inst is not None and self.releases.replica_exited(inst, replica):
            return
        if inst is None or replica not in inst.replicas:
            return
        inst.replicas.remove(replica)
        now = time.monotonic()
        # (Kubernetes restarts a crashing pod itself, with its own back-off.)
        if now - inst.ready_since < STABLE_AFTER and not self.runtime.self_healing:
            backoff = inst.start_failed(now)
            log.warning("%s: replica %s exited with status %d %.1fs after it became ready: "
                        "a failed start (%d in a row)%s (see %s)", inst.name, replica.endpoint,
                        code, now - inst.ready_since, inst.failures_in_a_row,
                        f"; no start for {backoff:g}s (crash back-off)" if backoff else "",
                        self.runtime.log_path(inst.spec))
        else:
            inst.failures_in_a_row = 0
            log.warning("%s: replica %s exited with status %d while serving (see %s)",
                        inst.name, replica.endpoint, code, self.runtime.log_path(inst.spec))
        if not inst.replicas:
            inst.fell_asleep()
        self.publish()
        self._on_scale(inst, "down")
        if not inst.spec.environment.sleeps and not self.runtime.self_healing:
            self._restart_later(inst)

    def wanted_specs(self, config: Config) -> list[InstanceSpec]:
        """The instances a config asks for here: its own, and (when wakegate keeps them, not
        the platform) those of the ephemeral environments. (sync_instances leaves out those
        of an environment being removed.)"""
        specs = config.instances()
        if not self.runtime.versions_on_objects:
            specs += ephemeral_specs(config, self.runtime.ephemeral.records())
        return specs

    def take_environment(self, name: str) -> list[Instance]:
        """Every instance of the environment leaves the route table now (held requests get
        404 at once) and is handed to the caller, who drains and stops its replicas; the
        environment stays out (`removing`) until `environment_gone`."""
        self.removing.add(name)
        taken = [inst for key, inst in self.instances.items()
                 if key[0] == name and inst.spec.environment.kind == EPHEMERAL]
        for inst in taken:
            del self.instances[inst.key]
            self.releases.forget(inst)
            log.info("%s was removed", inst.name)
        self.publish()
        return taken

    def environment_gone(self, name: str) -> None:
        """Nothing of the environment is left on the platform: the name may be used again."""
        self.removing.discard(name)

    # --- lifecycle ---

    async def run(self) -> None:
        """Open the runtime, start the always-on instances, then watch for idle ones
        (sleep.py) and for the load (scaling.py)."""
        await self.runtime.open(self)
        self.acting = True
        for inst in list(self.instances.values()):
            if not inst.spec.environment.sleeps or inst.key in self._pending:
                self.request_activation(inst.key)
        self._pending.clear()
        self._sleeper.start()
        self._load.start()

    async def always_on_started(self) -> None:
        """Wait for the first start of every always-on instance, ready or failed.

        So that `up` says it is up only once production answers without a
        cold start. Each start is bounded by its own start_timeout.
        """
        pending = [
            inst.activation for inst in self.instances.values()
            if inst.activation is not None and not inst.spec.environment.sleeps
        ]
        if pending:
            await asyncio.wait(pending)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        self._closing = True
        for inst in self.instances.values():
            self.releases.forget(inst)
        stopping = [*self._sleeper.close(), *self._load.close()]
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*stopping, *self._tasks, return_exceptions=True)
        grace = max((s.stop_grace for s in self.config.services.values()), default=10.0)
        await self.runtime.shutdown(grace)
        self.keys.flush()  # when keys were last used

    def status(self, proxy_port: int) -> list[dict[str, Any]]:
        return status_rows(self.instances.values(), self.activity, self.runtime.log_path,
                           proxy_port)
