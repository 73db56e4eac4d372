"""The Kubernetes runtime: instances are annotated Deployments, replicas their ready endpoints.

The glue of the package: it opens the connection, waits to be the leader
(leader.py, a Lease; it stops when it loses the Lease), keeps one informer
per kind of object (client.py) and, after every burst of watch events,
rediscovers the instances (discovery.py), follows their endpoints
(endpoints.py) and their API keys (keys.py, a Secret per instance), telling
the scaler through `RuntimeEvents`. Starting and stopping scale Deployments
(scale.py), a replica chosen to go marked first; a Deployment that an HPA
scales is not scaled by load (hpa.py). Last activity is written back to
Deployments (activity.py). Blue/green:
a production service with Deployments `{prefix}-<service>-blue` and `-green`
has two colours, kept on them (colours.py); the live one is the instance.
Ephemeral environments are namespaces it makes and deletes (ephemeral.py).
What the key and ephemeral stores ask of the cluster is its view
(cluster_view.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from typing import Any

from kubernetes_asyncio import client as k8s

from ...model import Key, Replica, other_colour
from ...spec import Config, Environment, InstanceSpec
from ..base import RuntimeEvents, StartFailed
from .activity import ActivityRecorder
from .client import Informer, KubeError, connect, format_micro_time
from .cluster_view import ClusterView
from .colours import (
    DEPLOYED_ANNOTATION,
    LIVE_ANNOTATION,
    LIVE_BY_ANNOTATION,
    LIVE_SINCE_ANNOTATION,
    ColourPair,
    KubeColours,
)
from .discovery import LiveOverrides, Placement, Where, discover
from .endpoints import SERVICE_NAME_LABEL, EndpointReplica, EndpointTracker, StartWaiter
from .ephemeral import KubeEphemeral
from .ephemeral_records import ENVIRONMENT_LABEL
from .hpa import autoscaled
from .keys import KEYS_LABEL, KubeKeyStore
from .leader import LeaderElector
from .scale import DeploymentWriter

log = logging.getLogger("wakegate.kubernetes")


class KubernetesRuntime(ClusterView):
    self_healing = True  # Deployments restart their own pods
    versions_on_objects = True  # the Deployment's wakegate.dev/version and image tag

    def __init__(self, config: Config) -> None:
        self._config = config
        self._events: RuntimeEvents | None = None
        self._client: k8s.ApiClient | None = None
        self.leader: LeaderElector | None = None
        self._placements: dict[Key, Placement] = {}  # the live Deployment of each instance
        self._prefixes: dict[str, str] = {}  # environment → prefix (prefixes.py)
        self._environments: dict[str, Environment] = {}  # namespace → environment, discovered
        # Blue/green instances: their two colours, and where the idle one is.
        self.pairs: dict[Key, ColourPair] = {}
        self._others: dict[Key, tuple[str, Placement]] = {}
        self._live_override: LiveOverrides = {}
        self._endpoints = EndpointTracker()
        self._key_digests: dict[Key, tuple[bytes, ...]] = {}
        self._autoscaled: set[Key] = set()  # instances an HPA scales (hpa.py)
        self._warned: set[str] = set()
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._reconcile_due = False
        self._opened = False
        self._writer = DeploymentWriter(
            self.api_client, lambda: self.leader is not None and self.leader.is_leader,
            lambda: self._deployments.cache)
        self._activity = ActivityRecorder(self._writer, lambda: self._placements,
                                          config.kubernetes.activity_persist_interval)
        self.keys = KubeKeyStore(self)
        self.colours = KubeColours(self)
        self.ephemeral = KubeEphemeral(self, self._warn_once)

    # --- opening: connect, become the leader, learn the cluster ---

    def api_client(self) -> k8s.ApiClient:
        assert self._client is not None, "the Kubernetes runtime is not open"
        return self._client

    async def open(self, events: RuntimeEvents) -> None:
        self._events = events
        settings = self._config.kubernetes
        self._client = await connect(settings.kubeconfig)
        identity = os.environ.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"
        self.leader = LeaderElector(self._client, settings, identity)
        await self.leader.acquire()
        self.leader.keep_renewing(self._lost_leadership)
        core = k8s.CoreV1Api(self._client)
        apps = k8s.AppsV1Api(self._client)
        discovery = k8s.DiscoveryV1Api(self._client)
        self._namespaces = Informer(
            "namespaces", core.list_namespace, self._changed, label_selector=ENVIRONMENT_LABEL
        )
        self._deployments = Informer(
            "deployments", apps.list_deployment_for_all_namespaces, self._changed
        )
        self._slices = Informer(
            "endpointslices", discovery.list_endpoint_slice_for_all_namespaces, self._changed,
            label_selector=SERVICE_NAME_LABEL,
        )
        self._secrets = Informer(
            "secrets", core.list_secret_for_all_namespaces, self._changed,
            label_selector=f"{KEYS_LABEL}=true",
        )
        self._hpas = Informer(
            "horizontalpodautoscalers",
            k8s.AutoscalingV2Api(self._client).list_horizontal_pod_autoscaler_for_all_namespaces,
            self._changed,
        )
        self._informers = [self._namespaces, self._deployments, self._slices, self._secrets,
                           self._hpas]
        self._tasks = [asyncio.ensure_future(i.run()) for i in self._informers]
        # Act only on a complete picture: every cache listed once.
        await asyncio.gather(*(i.synced.wait() for i in self._informers))
        self._reconcile(initial=True)
        self._opened = True
        self._tasks.append(asyncio.ensure_future(self._activity.run(events)))

    def config_changed(self, config: Config) -> None:
        """Environment settings from an applied config: rediscover with them."""
        self._config = config
        if self._opened:  # else the first reconcile, at open, uses it
            self._reconcile()

    def _lost_leadership(self) -> None:
        # Another controller may act from now on: stop acting at once, then stop
        # this one the normal way (Kubernetes restarts it, and it then waits to
        # become the leader again).
        if self._events is not None:
            self._events.stop_acting()
        os.kill(os.getpid(), signal.SIGTERM)

    # --- the cluster's state → instances and replicas ---

    def _changed(self) -> None:
        if not self._opened or self._reconcile_due:
            return
        # Coalesce a burst of watch events into one pass.
        self._reconcile_due = True
        asyncio.get_running_loop().call_soon(self._reconcile)

    def _warn_once(self, message: str) -> None:
        if message not in self._warned:
            self._warned.add(message)
            log.warning("%s", message)

    def _reconcile(self, initial: bool = False) -> None:
        self._reconcile_due = False
        events = self._events
        assert events is not None, "the Kubernetes runtime is not open"
        found = discover(self._namespaces.cache, self._deployments.cache, self._config,
                         self._live_override, self._warn_once)
        self._placements, self.pairs, self._others = found.placements, found.pairs, found.others
        self._environments = found.environments
        self._prefixes = {s.environment.name: s.environment.prefix for s in found.specs}
        self._autoscaled = autoscaled(self._placements, self._hpas.cache, self._warn_once)
        followed = [(key, None, p) for key, p in self._placements.items()]
        followed += [(key, colour, p) for key, (colour, p) in self._others.items()]
        self._endpoints.drop_unfollowed({p.where for _, _, p in followed}, events)
        events.sync_instances(found.specs, stop_removed=False)
        self._endpoints.sync(self._slices.cache, followed, events, initial)
        self._sync_keys()

    def ready_replicas(self, where: Where) -> list[EndpointReplica]:
        return self._endpoints.ready_replicas(where)

    def autoscaled_elsewhere(self, inst: InstanceSpec) -> bool:
        return inst.key in self._autoscaled

    # --- starting and stopping: the Deployment's scale ---

    async def start(self, inst: InstanceSpec, version: str, count: int) -> list[Replica]:
        if count <= 0:
            return []
        key = inst.key
        placement = self._placements.get(key)
        if placement is None:
            raise StartFailed(f"the Deployment of {inst.name} is gone")
        known = self._endpoints.known.get(placement.where, {})
        limit = max(inst.environment.max_replicas, 1)
        replicas = await self._start_at(inst, placement, min(len(known) + count, limit))
        # Recorded at once: a controller taking over right after this wake
        # must not judge the instance by an older recorded activity.
        await self._activity.record(key, time.time())
        return list(replicas)

    async def _start_at(self, inst: InstanceSpec, placement: Placement, target: int
                        ) -> list[EndpointReplica]:
        """Scale the Deployment to `target` and wait for the new ready endpoints."""
        where = placement.where
        before = len(self._endpoints.known.get(where, {}))
        count = target - before
        if count <= 0:
            return []
        waiter = StartWaiter(count)
        self._endpoints.waiters[where] = waiter
        try:
            try:
                await self._writer.scale(placement, target, at_least=True)
            except KubeError as exc:
                raise StartFailed(f"cannot scale the Deployment: {exc}") from None
            try:
                await asyncio.wait_for(waiter.done.wait(), inst.service.start_timeout)
            except TimeoutError:
                # Pods that never get ready (crash loop, unschedulable) must not
                # keep running for an instance that shows as not started.
                with contextlib.suppress(Exception):
                    await self._writer.scale(placement, before + len(waiter.replicas),
                                             at_least=False)
                raise StartFailed(
                    f"{len(waiter.replicas)} of {count} new replicas ready within "
                    f"{inst.service.start_timeout:g}s (see kubectl describe deployment -n "
                    f"{placement.namespace} {placement.deployment})"
                ) from None
            return list(waiter.replicas)
        except BaseException:
            # Whatever became ready meanwhile is not lost: the scaler gets it as found.
            live = self._placements.get(inst.key)
            if live is not None and live.where == where and self._events is not None:
                for replica in waiter.replicas:
                    if not replica.exited.done():
                        self._events.replica_appeared(inst.key, replica)
            raise
        finally:
            if self._endpoints.waiters.get(where) is waiter:
                del self._endpoints.waiters[where]

    async def stop(self, replicas: list[Replica], grace: float) -> None:
        by_where: dict[Where, list[EndpointReplica]] = {}
        for replica in replicas:
            assert isinstance(replica, EndpointReplica)
            by_where.setdefault(replica.where, []).append(replica)
        for where, going in by_where.items():
            known = self._endpoints.known.get(where, {})
            endpoints = {r.endpoint for r in going}
            remaining = len([a for a in known if a not in endpoints])
            # The scaler drained `going`: the scale-down must remove them, not others.
            await self._writer.mark_to_go(where, [r.pod for r in going if r.pod],
                                          others_stay=remaining > 0)
            await self._scale_down(Placement(*where, None), remaining, going, grace)

    async def _scale_down(self, placement: Placement, remaining: int,
                          going: list[EndpointReplica], grace: float) -> None:
        where = placement.where
        try:
            await self._writer.scale(placement, remaining, at_least=False)
        except (KubeError, StartFailed) as exc:
            # Nothing stopped: the caller keeps the replicas, which still serve.
            raise StartFailed(f"could not scale {where[0]}/{where[1]} down: {exc}") from None
        # Asleep means stopped: wait until the pods have left the EndpointSlices
        # (they are gone when their process has exited), as the local runtime
        # waits for its processes.
        gone = self._endpoints.left(where, going)
        self._changed()
        try:
            await asyncio.wait_for(gone.wait(), grace + 5.0)
        except TimeoutError:
            log.warning("%s/%s: pods still listed %gs after scaling down", where[0], where[1],
                        grace + 5.0)

    async def set_version(self, inst: InstanceSpec, version: str) -> None:
        """Point the Deployment at `version`; it rolls its pods itself, and a Deployment
        at 0 replicas just starts the new version at its next wake."""
        placement = self._placements.get(inst.key)
        if placement is None:
            raise LookupError(f"the Deployment of {inst.name} is gone")
        await self._writer.set_version(placement, version, {}, inst.environment.prefix)

    # --- blue/green (colours.KubeColours drives these) ---

    def colour_placement(self, key: Key, colour: str) -> Placement:
        pair = self.pairs.get(key)
        if pair is None:
            raise StartFailed(f"{key[0]}/{key[1]} has no blue/green Deployments any more")
        return Placement(pair.namespace, pair.deployments[colour], None)

    def _fresh_pair(self, inst: InstanceSpec) -> ColourPair:
        """The pair as the cache shows it now, our own latest writes included."""
        pair = self.pairs[inst.key]
        objs = {c: self._deployments.cache.get((pair.namespace, name))
                for c, name in pair.deployments.items()}
        if not all(objs.values()):
            return pair
        return ColourPair.of(pair.namespace, pair.deployments,
                             {c: o for c, o in objs.items() if o is not None},
                             inst.environment.prefix)

    async def start_colour(self, inst: InstanceSpec, colour: str, version: str,
                           size: int) -> list[EndpointReplica]:
        placement = self.colour_placement(inst.key, colour)
        seq = self._fresh_pair(inst).next_seq
        await self._writer.set_version(placement, version, {DEPLOYED_ANNOTATION: str(seq)},
                                       inst.environment.prefix)
        try:
            await self._start_at(inst, placement, size)
        except StartFailed:
            with contextlib.suppress(Exception):
                await self.stop_colour(inst, colour, 5.0)
            raise
        return self.ready_replicas(placement.where)

    async def stop_colour(self, inst: InstanceSpec, colour: str, grace: float) -> None:
        placement = self.colour_placement(inst.key, colour)
        await self._scale_down(placement, 0, self.ready_replicas(placement.where), grace)

    async def switch_live(self, inst: InstanceSpec, colour: str, verb: str) -> None:
        """Record `colour` as live: one write, to that colour's Deployment."""
        key = inst.key
        placement = self.colour_placement(key, colour)
        old = self._placements[key]
        seq = self._fresh_pair(inst).next_seq
        self._writer.check_leader()
        # Until the write's answer is here, the old colour stays live for every
        # reconcile, even one that sees the write's watch event first: the
        # scaler moves the instance only after this returns.
        pinned = self._live_override.get(key)
        self._live_override[key] = (other_colour(colour), 1 << 62)
        try:
            written = await self._writer.annotate(placement, {
                LIVE_ANNOTATION: str(seq), LIVE_SINCE_ANNOTATION: format_micro_time(time.time()),
                LIVE_BY_ANNOTATION: verb})
        except BaseException:
            if pinned is None:
                self._live_override.pop(key, None)
            else:
                self._live_override[key] = pinned
            raise
        self._writer.written(written)
        self._live_override[key] = (colour, seq)
        self._placements[key] = dataclasses.replace(placement, persisted_activity=None)
        self._others[key] = (other_colour(colour), Placement(old.namespace, old.deployment, None))
        self.pairs[key] = dataclasses.replace(self.pairs[key], live=colour)
        self._changed()

    # --- the rest of the runtime port ---

    def log_path(self, inst: InstanceSpec) -> str:
        placement = self._placements.get(inst.key)
        if placement is None:
            return "-"
        return f"kubectl logs -n {placement.namespace} deployment/{placement.deployment}"

    async def shutdown(self, grace: float) -> None:
        # Instances keep running: a controller going away is not a reason to stop them.
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.leader is not None:
            await self.leader.release()
        if self._client is not None:
            await self._client.close()

    def kill_all_now(self) -> None:
        return None  # the Deployments keep running: they are the cluster's, not ours
