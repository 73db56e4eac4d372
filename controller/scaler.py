"""When to wake and when to sleep: the instance state machine and the route table it publishes.

Every change of an instance's state is published to the proxies as a new
route-table version. Start and stop of one instance are serialised by its
lock, so there is one activation at a time however many requests wait, and a
request that arrives while an instance is going to sleep is held by the proxy
and wakes it again once the stop is done.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from .events import event
from .keys import KeyStore
from .releases import LocalColours, ReleaseRefused, Releases
from .runtimes.base import ReplicaLike as Replica
from .runtimes.base import Runtime
from .runtimes.local import LocalRuntime
from .spec import (
    READY,
    SLEEPING,
    STARTING,
    STOPPING,
    Config,
    InstanceSpec,
    Route,
    RouteTable,
)
from .versions import VersionStore

log = logging.getLogger("wakegate.controller")

Key = tuple[str, str]
ActivitySource = Callable[[Key], tuple[int, float]]

_MAX_IDLE_CHECK = 1.0  # seconds between idle checks when nothing is due sooner
_RESTART_DELAY = 0.5  # an always-on instance that lost its replicas starts again after this
# A replica that exits sooner than this after the instance became ready did not
# really start: it counts as a failed start for the crash back-off (as a
# container that keeps exiting does for Kubernetes' CrashLoopBackOff).
STABLE_AFTER = 10.0


class Instance:
    """The controller's mutable record of one (environment, service)."""

    def __init__(self, spec: InstanceSpec, host: str) -> None:
        self.spec = spec
        self.host = host
        self.state = SLEEPING
        self.version = spec.service.version
        self.replicas: list[Replica] = []
        self.failures = 0
        self.error: str | None = None
        self.ready_since = 0.0
        # Activity before this moment is unknown: a new instance, or one a
        # restarted controller found (then the persisted last activity).
        self.activity_floor = time.monotonic()
        self.lock = asyncio.Lock()
        self.activation: asyncio.Task[None] | None = None
        # Crash back-off (spec.CrashBackoff): failed activations since the last
        # success, and the monotonic second until which no start is tried.
        self.failures_in_a_row = 0
        self.backoff_until = 0.0
        self.route: Route | None = None

    def backoff_left(self, now: float | None = None) -> float:
        return max(self.backoff_until - (time.monotonic() if now is None else now), 0.0)

    def end_backoff(self) -> None:
        """A fresh start: after a new version, an apply."""
        self.failures_in_a_row = 0
        self.backoff_until = 0.0

    def start_failed(self, now: float) -> float:
        """One more failed start in a row: the seconds of back-off it earns (0: none yet)."""
        self.failures_in_a_row += 1
        backoff = self.spec.environment.crash_backoff.delay(self.failures_in_a_row)
        if backoff:
            self.backoff_until = now + backoff
        return backoff

    def failed_starts(self, now: float) -> int:
        """Failed starts in a row as of now (a replica ready for STABLE_AFTER ended them)."""
        if self.state == READY and now - self.ready_since >= STABLE_AFTER:
            return 0
        return self.failures_in_a_row

    @property
    def key(self) -> Key:
        return self.spec.key

    @property
    def name(self) -> str:
        return self.spec.name


class DeployRefused(Exception):
    """The deploy cannot be done as asked; nothing was changed."""


class Scaler:
    def __init__(
        self,
        config: Config,
        keys: KeyStore,
        on_scale: Callable[[Instance, str], None],
        runtime: Runtime | None = None,
    ) -> None:
        self.config = config
        self.keys: Any = keys
        self._on_scale = on_scale
        self.runtime: Any = runtime or self._make_runtime()
        # False until the runtime is open (Kubernetes: leader elected and synced).
        self.acting = False
        self._pending: set[Key] = set()
        self.versions = VersionStore(config.state_dir)
        make_colours = getattr(self.runtime, "colours", None)
        self.releases = Releases(self, make_colours() if make_colours else LocalColours(self))
        # The prerelease route of a production instance → that instance.
        self._aliases: dict[Key, Key] = {}
        self.instances: dict[Key, Instance] = {}
        for spec in config.instances():
            self.instances[spec.key] = self._new_instance(spec)
        self._subscribers: list[Callable[[RouteTable], None]] = []
        self._sources: list[ActivitySource] = []
        self._routes_by_host: dict[str, Route] = {}
        self._routes_by_key: dict[Key, Route] = {}
        self._version = 0
        self.table = RouteTable.build(0, [])
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._idle_loop: asyncio.Task[None] | None = None
        self._closing = False
        for inst in self.instances.values():
            self._refresh_route(inst)
        self._swap_table()

    def _make_runtime(self) -> Runtime:
        if self.config.runtime == "kubernetes":
            # Imported only here: the local runtime never loads the client.
            from .runtimes.kubernetes import KubernetesRuntime

            runtime = KubernetesRuntime(self.config, self)
            self.keys = runtime.keys
            return runtime
        return LocalRuntime(self.config, self.replica_exited)

    # --- the set of instances (config, cluster discovery, apply) ---

    def _new_instance(self, spec: InstanceSpec) -> Instance:
        inst = Instance(spec, self.config.host_of(*spec.key))
        if not self.runtime.versions_on_objects:
            inst.version = self.versions.initial(spec, self._environment_of_kind("demo", spec))
        return inst

    def _environment_of_kind(self, kind: str, spec: InstanceSpec) -> str | None:
        for name in spec.service.environments:
            env = self.config.environments.get(name)
            if env is not None and env.kind == kind:
                return name
        return None

    def sync_instances(self, specs: list[InstanceSpec], stop_removed: bool = True) -> None:
        """Make the instances exactly `specs`: new ones appear asleep, gone ones go away.

        A changed spec (idle timeout, access, ...) takes effect at once. A
        removed instance's route disappears, so its held requests get 404.
        """
        wanted = {spec.key: spec for spec in specs}
        changed: list[Instance] = []
        for key, spec in wanted.items():
            inst = self.instances.get(key)
            if inst is None:
                inst = self._new_instance(spec)
                self.instances[key] = inst
                changed.append(inst)
                log.info("%s appeared", inst.name)
                if self.acting and not spec.environment.sleeps:
                    self.request_activation(key)
            elif inst.spec != spec:
                inst.spec = spec
                if self.runtime.versions_on_objects:
                    inst.version = spec.service.version
                changed.append(inst)
        for key in [k for k in self.instances if k not in wanted]:
            inst = self.instances.pop(key)
            if inst.route is not None:
                self._routes_by_host.pop(inst.route.host, None)
            self._routes_by_key.pop(key, None)
            for alias in [a for a, target in self._aliases.items() if target == key]:
                route = self._routes_by_key.pop(alias, None)
                if route is not None:
                    self._routes_by_host.pop(route.host, None)
                del self._aliases[alias]
            log.info("%s was removed", inst.name)
            self.releases.forget(inst)
            replicas, inst.replicas = inst.replicas, []
            if stop_removed and replicas:
                self._spawn(self.runtime.stop(replicas, inst.spec.service.stop_grace))
        self.publish(*changed)

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
            inst.state = READY
            inst.error = None
            inst.ready_since = active_at if active_at is not None else time.monotonic()
            log.info("%s is ready (%d replica%s found)", inst.name, len(inst.replicas),
                     "" if len(inst.replicas) == 1 else "s",
                     extra=event(inst.spec, "found_ready", replicas=len(inst.replicas)))
        self.publish(inst)
        self._on_scale(inst, "up")

    # --- route table ---

    def subscribe(self, apply: Callable[[RouteTable], None]) -> None:
        self._subscribers.append(apply)
        apply(self.table)

    def add_activity_source(self, source: ActivitySource) -> None:
        self._sources.append(source)

    def _refresh_route(self, inst: Instance) -> None:
        env, svc = inst.spec.environment, inst.spec.service
        route = Route(
            environment=env.name,
            service=svc.name,
            host=inst.host,
            access=env.access,
            state=inst.state,
            # A replica whose end was seen but not yet handled is never routed to.
            endpoints=tuple(r.endpoint for r in inst.replicas if not r.exited.done())
            if inst.state == READY else (),
            key_hashes=self.keys.hashes(env.name, svc.name) if env.access == "api_key" else (),
            hold_timeout=env.hold_timeout,
            hold_queue_size=env.hold_queue_size,
            wake_strategy=env.wake_strategy,
            ignore_paths=svc.ignore_paths,
            ignore_user_agents=svc.ignore_user_agents,
            version=inst.version,
            failures=inst.failures,
            error=inst.error,
            backoff_until=inst.backoff_until,
        )
        inst.route = route
        self._routes_by_host[route.host] = route
        self._routes_by_key[route.key] = route
        if env.kind == "production":
            self._refresh_prerelease_route(inst, route)

    def _refresh_prerelease_route(self, inst: Instance, live: Route) -> None:
        """`{service}.prerelease.{domain}`: the preview colour, else the live one."""
        key = ("prerelease", inst.spec.service.name)
        host = self.config.host_of(*key)
        if key in self.instances or self._routes_by_host.get(host, live).key not in (key,
                                                                                    live.key):
            return  # an instance of its own has that name: it wins
        preview = self.releases.preview_endpoints(inst)
        route = dataclasses.replace(
            live, environment=key[0], host=host, key_hashes=(),
            endpoints=preview if preview is not None else live.endpoints,
            state=READY if preview is not None else live.state,
            version=self.releases.preview_version(inst) or live.version,
        )
        self._aliases[key] = inst.key
        self._routes_by_host[host] = route
        self._routes_by_key[key] = route

    def _swap_table(self) -> None:
        self._version += 1
        # Copies, so that the published snapshot never changes under a reader.
        self.table = RouteTable(
            self._version,
            MappingProxyType(dict(self._routes_by_host)),
            MappingProxyType(dict(self._routes_by_key)),
        )

    def publish(self, *changed: Instance) -> None:
        """Apply a state change everywhere: every subscribed proxy gets the new table now."""
        for inst in changed:
            self._refresh_route(inst)
        self._swap_table()
        for apply in self._subscribers:
            apply(self.table)
        self._wakeup.set()

    def keys_changed(self, key: Key) -> None:
        self.publish(self.instances[key])

    async def create_key(self, environment: str, service: str) -> str:
        """A new API key for an instance, stored (as a digest) before it is returned."""
        create_async = getattr(self.keys, "create_async", None)
        if create_async is not None:
            key: str = await create_async(environment, service)
        else:
            key = self.keys.create(environment, service)
        if (environment, service) in self.instances:
            self.keys_changed((environment, service))
        return key

    async def revoke_key(self, ident: str) -> tuple[str, str] | None:
        """Revoke the key with this id everywhere; the (environment, service) it was for."""
        revoke_async = getattr(self.keys, "revoke_async", None)
        found = await revoke_async(ident) if revoke_async is not None else self.keys.revoke(ident)
        if found is not None and found in self.instances:
            self.keys_changed(found)  # every proxy gets a table without it, now
        return found  # type: ignore[no-any-return]

    # --- activity ---

    def activity(self, inst: Instance) -> tuple[int, float]:
        """(requests in flight on all proxies, monotonic time the instance was last active)."""
        in_flight = 0
        last = max(inst.activity_floor, inst.ready_since)
        for source in self._sources:
            n, end = source(inst.key)
            in_flight += n
            last = max(last, end)
        return in_flight, last

    # --- waking ---

    def request_activation(self, key: Key) -> None:
        inst = self.instances.get(self._aliases.get(key, key))
        if inst is None or self._closing:
            return
        if not self.acting:
            # Before the runtime is open (Kubernetes: not the leader yet):
            # remembered, and done as soon as the scaler may act.
            self._pending.add(key)
            return
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
                self.publish(inst)
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
                self.publish(inst)
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
            # A replica that died between ready and here is already gone.
            inst.replicas.extend(r for r in new if not r.exited.done())
            if not inst.replicas:
                inst.state = SLEEPING
                self.publish(inst)
                return
            inst.state = READY
            inst.error = None
            inst.ready_since = time.monotonic()
            # Requests may go again; the failed starts in a row end only once a replica
            # stays up (replica_exited, failed_starts).
            inst.backoff_until = 0.0
            self.publish(inst)
            self._on_scale(inst, "up")
            log.info(
                "woke %s (version %s, %d replica%s) in %.0f ms",
                inst.name, inst.version, len(inst.replicas),
                "" if len(inst.replicas) == 1 else "s", (time.monotonic() - started) * 1000,
                extra=event(inst.spec, "woke", version=inst.version, replicas=len(inst.replicas),
                            duration_ms=round((time.monotonic() - started) * 1000, 1)),
            )

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
            inst.state = SLEEPING
            inst.ready_since = 0.0
        self.publish(inst)
        self._on_scale(inst, "down")
        if not inst.spec.environment.sleeps and not self.runtime.self_healing:
            self._restart_later(inst)

    # --- apply: a new config while running ---

    def apply(self, config: Config) -> dict[str, Any]:
        """Reconcile with an edited (already valid) config; all or nothing.

        Instances and their policies change live. What needs a restart (where
        it listens, the runtime, state_dir, the domain every host is made of,
        the proxy's own settings) refuses the whole change, so the running
        system keeps the old config.
        """
        restart = [name for name, old, new in (
            ("listen", (self.config.proxy.host, self.config.proxy.port, self.config.controller),
             (config.proxy.host, config.proxy.port, config.controller)),
            ("runtime", self.config.runtime, config.runtime),
            ("state_dir", self.config.state_dir, config.state_dir),
            ("domain", self.config.domain, config.domain),
            ("proxy", self.config.proxy, config.proxy),
            ("kubernetes", self.config.kubernetes, config.kubernetes),
        ) if old != new]
        if restart:
            raise DeployRefused(f"{', '.join(restart)} changed: that needs a restart of "
                                "wakegate, not apply")
        before = set(self.instances)
        self.config = config
        if self.runtime.versions_on_objects:
            # Kubernetes: the instances are the cluster's; policies come from the file.
            self.runtime.config_changed(config)
        else:
            self.sync_instances(config.instances())
        # The operator may have fixed what made a service crash: try it again.
        backed_off = [inst for inst in self.instances.values() if inst.failures_in_a_row]
        for inst in backed_off:
            inst.end_backoff()
        if backed_off:
            self.publish(*backed_off)
            for inst in backed_off:
                if not inst.spec.environment.sleeps:
                    self.request_activation(inst.key)  # always on: started now, not later
        after = set(self.instances)
        return {"added": sorted("/".join(k) for k in after - before),
                "removed": sorted("/".join(k) for k in before - after),
                "instances": len(after)}

    # --- versions ---

    async def deploy(self, environment: str, service: str, version: str) -> dict[str, Any]:
        """Make an instance run `version`; safe to repeat.

        A sleeping instance stays asleep and wakes with it. A running one gets
        new replicas of it first; only once they are ready does the route
        switch and the old ones stop, so nothing is refused meanwhile. If the
        new version does not start, the old one keeps serving and nothing
        changes.
        """
        inst = self.instances.get((environment, service))
        if inst is None:
            raise LookupError(f"there is no instance {environment}/{service}")
        kind = inst.spec.environment.kind
        if kind == "prerelease":
            raise DeployRefused(f"{environment} is a prerelease environment: deploy to "
                                "production, whose new versions go to the preview colour")
        if kind == "production":
            return await self.releases.deploy(inst, version)
        async with inst.lock:
            previous = inst.version
            if previous == version:
                return {"environment": environment, "service": service, "version": version,
                        "previous": previous, "changed": False}
            inst.end_backoff()  # a new version deserves a start at once
            old: list[Replica] = []
            if self.runtime.versions_on_objects:
                await self.runtime.set_version(inst.spec, version)
            else:
                old = list(inst.replicas)
                # New replicas first: a start failure raises here, with nothing changed.
                new = await self.runtime.start(inst.spec, version, len(old)) if old else []
                self.versions.set(environment, service, version)
                inst.replicas = [*new, *(r for r in inst.replicas if r not in old)]
                if new:
                    inst.ready_since = time.monotonic()
            inst.version = version
            self.publish(inst)  # the switch: from here on requests go to the new replicas
            if old:
                await self.runtime.stop(old, inst.spec.service.stop_grace)
        log.info("%s: version %s (was %s)", inst.name, version, previous,
                 extra=event(inst.spec, "deployed", version=version, previous=previous))
        if not inst.spec.environment.sleeps and not inst.replicas:
            self.request_activation(inst.key)  # always on, down (crash back-off): start it
        return {"environment": environment, "service": service, "version": version,
                "previous": previous, "changed": True}

    def _of_kind(self, service: str, kind: str) -> Instance | None:
        """The service's instance in an environment of that kind; LookupError if no service."""
        found = [i for i in self.instances.values() if i.spec.service.name == service]
        if not found:
            raise LookupError(f"there is no service {service}")
        return next((i for i in found if i.spec.environment.kind == kind), None)

    def production_instance(self, service: str) -> Instance:
        inst = self._of_kind(service, "production")
        if inst is None:
            raise ReleaseRefused(f"{service} does not run in a production environment")
        return inst

    async def promote(self, service: str) -> dict[str, Any]:
        """The private version becomes the demo (public) version."""
        private, demo = self._of_kind(service, "private"), self._of_kind(service, "demo")
        if private is None or demo is None:
            raise DeployRefused(f"{service} needs both a private and a demo instance to promote")
        return await self.deploy(demo.spec.environment.name, service, private.version)

    # --- sleeping ---

    async def run(self) -> None:
        """Open the runtime, start the always-on instances, then watch for idle ones."""
        await self.runtime.open()
        self.acting = True
        for inst in list(self.instances.values()):
            if not inst.spec.environment.sleeps or inst.key in self._pending:
                self.request_activation(inst.key)
        self._pending.clear()
        self._idle_loop = asyncio.ensure_future(self._watch_idle())

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

    async def _watch_idle(self) -> None:
        while not self._closing:
            now = time.monotonic()
            next_check = now + _MAX_IDLE_CHECK
            for inst in self.instances.values():
                env = inst.spec.environment
                if inst.state != READY or not env.sleeps or inst.lock.locked():
                    continue
                assert env.idle_timeout is not None
                in_flight, last = self.activity(inst)
                if in_flight:
                    next_check = min(next_check, now + env.idle_timeout)
                    continue
                due = last + env.idle_timeout
                if due <= now:
                    self._spawn(self._put_to_sleep(inst))
                else:
                    next_check = min(next_check, due)
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), max(next_check - now, 0.001))

    async def _put_to_sleep(self, inst: Instance) -> None:
        async with inst.lock:
            idle_timeout = inst.spec.environment.idle_timeout
            if inst.state != READY or idle_timeout is None or self._closing:
                return
            in_flight, last = self.activity(inst)
            if in_flight or time.monotonic() - last < idle_timeout:
                return
            # From here on, proxies hold new requests instead of forwarding them.
            inst.state = STOPPING
            self.publish(inst)
            # A request that got the endpoints before the switch is in flight
            # now; one that ended in between moved `last`. Either keeps it awake.
            in_flight, last_again = self.activity(inst)
            if in_flight or last_again != last:
                inst.state = READY
                self.publish(inst)
                return
            replicas, inst.replicas = inst.replicas, []
            idle_for = time.monotonic() - last
            try:
                await self.runtime.stop(replicas, inst.spec.service.stop_grace)
            except Exception as exc:
                # Nothing was stopped (Kubernetes: the scale-down failed): it serves on.
                inst.replicas = [*replicas, *inst.replicas]
                inst.state = READY
                self.publish(inst)
                log.error("%s could not be put to sleep: %s", inst.name, exc)
                return
            if inst.replicas:
                # Replicas someone else started meanwhile (Kubernetes): they serve.
                inst.state = READY
                inst.ready_since = time.monotonic()
                self.publish(inst)
                return
            inst.state = SLEEPING
            inst.ready_since = 0.0
            inst.failures_in_a_row = 0  # it ran until it was idle: a good start
            self.publish(inst)
            self._on_scale(inst, "down")
            log.info("%s is asleep after %.1f s idle", inst.name, idle_for,
                     extra=event(inst.spec, "slept", idle_seconds=round(idle_for, 1)))

    # --- lifecycle and views ---

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def shutdown(self) -> None:
        self._closing = True
        self.releases.shutdown()
        self._wakeup.set()
        if self._idle_loop is not None:
            self._idle_loop.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        grace = max((s.stop_grace for s in self.config.services.values()), default=10.0)
        await self.runtime.shutdown(grace)
        self.keys.flush()  # when keys were last used

    def status(self, proxy_port: int) -> list[dict[str, Any]]:
        now = time.monotonic()
        rows = []
        for inst in self.instances.values():
            in_flight, last = self.activity(inst)
            port = "" if proxy_port == 80 else f":{proxy_port}"
            rows.append(
                {
                    "environment": inst.spec.environment.name,
                    "service": inst.spec.service.name,
                    "kind": inst.spec.environment.kind,
                    "access": inst.spec.environment.access,
                    "state": inst.state,
                    "replicas": len(inst.replicas),
                    "version": inst.version,
                    "in_flight": in_flight,
                    "idle_seconds": 0.0 if in_flight else round(now - last, 3),
                    "idle_timeout": inst.spec.environment.idle_timeout,
                    "url": f"http://{inst.host}{port}/",
                    "error": inst.error,
                    "failures_in_a_row": inst.failed_starts(now),
                    # Rounded up: 0 only once it is really over.
                    "backoff_seconds": math.ceil(inst.backoff_left(now) * 10) / 10,
                    "log": self.runtime.log_path(inst.spec),
                }
            )
        return rows
