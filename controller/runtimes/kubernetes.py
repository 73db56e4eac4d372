"""The Kubernetes runtime: instances are annotated Deployments, replicas their ready endpoints.

- Discovery: a namespace labelled `wakegate.dev/environment` (and
  `wakegate.dev/kind`) is an environment; a Deployment there annotated
  `wakegate.dev/service` is an instance, served by the Service of the same
  name. Annotations override the environment's idle and hold timeouts and the
  service's ignored paths.
- Scaling goes through the `deployments/scale` subresource only, read fresh
  and written back with its resourceVersion, so a change made by someone else
  is never overwritten from a stale cache (409 → read again).
- Readiness comes from EndpointSlices: the proxy forwards straight to the
  ready endpoint addresses, so a cold start does not wait for kube-proxy.
- Key hashes live in a Secret per instance; last activity is written to the
  Deployment as an annotation every few seconds, so that a restarted
  controller neither puts a busy service to sleep nor forgets an idle one.
- Only the leader (Lease) acts; it stops when it loses the Lease.
- Blue/green: a production service with Deployments `<service>-blue` and
  `<service>-green` (each with its Service) has two colours; which is live is
  kept on them (see kube_colours.py). The live one is the instance.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from kubernetes_asyncio import client as k8s

from ..leader import LeaderElector
from ..spec import KIND_DEFAULTS, KINDS, Config, Environment, InstanceSpec, Service
from ..units import parse_duration
from .base import StartFailed
from .kube_client import (
    VERSION_ANNOTATION,
    Informer,
    KubeError,
    Obj,
    call,
    connect,
    deployment_version,
    format_micro_time,
    parse_micro_time,
)
from .kube_colours import (
    COLOURS,
    DEPLOYED_ANNOTATION,
    LIVE_ANNOTATION,
    LIVE_BY_ANNOTATION,
    LIVE_SINCE_ANNOTATION,
    ColourPair,
    KubeColours,
    other_colour,
)
from .kube_keys import KEYS_LABEL, KubeKeyStore, hashes_in, secret_name

if TYPE_CHECKING:
    from ..scaler import Scaler

log = logging.getLogger("wakegate.kubernetes")

Key = tuple[str, str]
Where = tuple[str, str]  # (namespace, Deployment name)

ENVIRONMENT_LABEL = "wakegate.dev/environment"
KIND_LABEL = "wakegate.dev/kind"
SERVICE_ANNOTATION = "wakegate.dev/service"
IDLE_TIMEOUT_ANNOTATION = "wakegate.dev/idle-timeout"
HOLD_TIMEOUT_ANNOTATION = "wakegate.dev/hold-timeout"
IGNORE_PATHS_ANNOTATION = "wakegate.dev/ignore-paths"
IGNORE_USER_AGENTS_ANNOTATION = "wakegate.dev/ignore-user-agents"
ACTIVITY_ANNOTATION = "wakegate.dev/last-activity"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

_ENVIRONMENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9-]{0,23}")
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_SCALE_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Placement:
    namespace: str
    deployment: str  # also the name of the Service whose EndpointSlices hold the replicas
    persisted_activity: float | None  # wall-clock seconds, from the annotation

    @property
    def where(self) -> Where:
        return (self.namespace, self.deployment)


class EndpointReplica:
    """A ready endpoint of an instance's Deployment."""

    __slots__ = ("endpoint", "exited", "key", "where")

    def __init__(self, key: Key, where: Where, endpoint: str) -> None:
        self.key = key
        self.where = where
        self.endpoint = endpoint
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def gone(self) -> None:
        if not self.exited.done():
            self.exited.set_result(0)


class _StartWaiter:
    def __init__(self, count: int) -> None:
        self.count = count
        self.replicas: list[EndpointReplica] = []
        self.done = asyncio.Event()

    def add(self, replica: EndpointReplica) -> None:
        self.replicas.append(replica)
        if len(self.replicas) >= self.count:
            self.done.set()


class KubernetesRuntime:
    self_healing = True  # Deployments restart their own pods
    versions_on_objects = True  # the Deployment's wakegate.dev/version and image tag

    def __init__(self, config: Config, scaler: Scaler) -> None:
        self._config = config
        self._scaler = scaler
        self._client: k8s.ApiClient | None = None
        self.leader: LeaderElector | None = None
        self._placements: dict[Key, Placement] = {}  # the live Deployment of each instance
        # Blue/green instances: their two colours, and where the idle one is.
        self.pairs: dict[Key, ColourPair] = {}
        self._others: dict[Key, tuple[str, Placement]] = {}
        self._live_override: dict[Key, tuple[str, int]] = {}
        self._known: dict[Where, dict[str, EndpointReplica]] = {}
        self._leaving: dict[Where, set[str]] = {}
        self._waiters: dict[Where, _StartWaiter] = {}
        self._gone_events: dict[Where, asyncio.Event] = {}
        self._key_digests: dict[Key, tuple[bytes, ...]] = {}
        self._persisted: dict[Key, float] = {}
        self._warned: set[str] = set()
        self._informers: list[Informer] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._reconcile_due = False
        self._opened = False
        self.keys = KubeKeyStore(self._api_client, self._namespace_of, self._secret_of,
                                 self._secret_written, lambda: self._placements.keys())

    # --- opening: connect, become the leader, learn the cluster ---

    def _api_client(self) -> k8s.ApiClient:
        assert self._client is not None, "the Kubernetes runtime is not open"
        return self._client

    async def open(self) -> None:
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
        self._informers = [self._namespaces, self._deployments, self._slices, self._secrets]
        self._tasks = [asyncio.ensure_future(i.run()) for i in self._informers]
        # Act only on a complete picture: every cache listed once.
        await asyncio.gather(*(i.synced.wait() for i in self._informers))
        self._reconcile(initial=True)
        self._opened = True
        self._tasks.append(asyncio.ensure_future(self._persist_activity()))

    def config_changed(self, config: Config) -> None:
        """Environment settings from an applied config: rediscover with them."""
        self._config = config
        if self._opened:  # else the first reconcile, at open, uses it
            self._reconcile()

    def _lost_leadership(self) -> None:
        # Another controller may act from now on: stop acting at once, then stop
        # this one the normal way (Kubernetes restarts it, and it then waits to
        # become the leader again).
        self._scaler.acting = False
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

    def _environments(self) -> dict[str, Environment]:
        """namespace → environment, for every correctly labelled namespace."""
        found: dict[str, Environment] = {}
        for (_, namespace), obj in self._namespaces.cache.items():
            labels = obj.get("metadata", {}).get("labels") or {}
            name = labels.get(ENVIRONMENT_LABEL, "")
            kind = labels.get(KIND_LABEL) or (name if name in KINDS else "")
            if not _ENVIRONMENT_NAME.fullmatch(name):
                self._warn_once(f"namespace {namespace}: {ENVIRONMENT_LABEL}={name!r} is not a "
                                "valid environment name (1-24 letters, digits, dashes)")
                continue
            if kind not in KINDS:
                self._warn_once(f"namespace {namespace}: {KIND_LABEL}={kind!r} is not one of "
                                f"{', '.join(KINDS)}")
                continue
            configured = self._config.environments.get(name)
            if configured is not None and configured.kind == kind:
                found[namespace] = configured
            else:
                d = KIND_DEFAULTS[kind]
                found[namespace] = Environment(
                    name=name, kind=kind, access=d.access, idle_timeout=d.idle_timeout,
                    min_replicas=d.min_replicas, max_replicas=d.max_replicas,
                )
        return found

    def _instance(
        self, env: Environment, deployment: Obj
    ) -> tuple[InstanceSpec, Placement] | None:
        meta = deployment.get("metadata", {})
        annotations = meta.get("annotations") or {}
        service = annotations.get(SERVICE_ANNOTATION)
        if service is None:
            return None
        where = f"deployment {meta.get('namespace')}/{meta.get('name')}"
        if not _DNS_LABEL.fullmatch(service):
            self._warn_once(f"{where}: {SERVICE_ANNOTATION}={service!r} is not a DNS label")
            return None
        overrides: dict[str, Any] = {}
        for annotation, field in ((IDLE_TIMEOUT_ANNOTATION, "idle_timeout"),
                                  (HOLD_TIMEOUT_ANNOTATION, "hold_timeout")):
            raw = annotations.get(annotation)
            if raw is None:
                continue
            try:
                overrides[field] = (None if raw == "never" and field == "idle_timeout"
                                    else parse_duration(raw))
            except ValueError as exc:
                self._warn_once(f"{where}: {annotation}: {exc}; using the environment's value")
        if overrides:
            env = dataclasses.replace(env, **overrides)
        spec = InstanceSpec(env, Service(
            name=service, command="", version=deployment_version(deployment),
            environments=(env.name,),
            ignore_paths=_comma_list(annotations.get(IGNORE_PATHS_ANNOTATION)),
            ignore_user_agents=_comma_list(annotations.get(IGNORE_USER_AGENTS_ANNOTATION)),
        ))
        persisted = parse_micro_time(annotations.get(ACTIVITY_ANNOTATION))
        return spec, Placement(meta.get("namespace", ""), meta.get("name", ""), persisted)

    def _reconcile(self, initial: bool = False) -> None:
        self._reconcile_due = False
        environments = self._environments()
        found: dict[Key, list[tuple[InstanceSpec, Placement, Obj]]] = {}
        for (namespace, _), obj in sorted(self._deployments.cache.items()):
            env = environments.get(namespace)
            if env is None:
                continue
            instance = self._instance(env, obj)
            if instance is not None:
                found.setdefault(instance[0].key, []).append((*instance, obj))
        specs: list[InstanceSpec] = []
        placements: dict[Key, Placement] = {}
        pairs: dict[Key, ColourPair] = {}
        others: dict[Key, tuple[str, Placement]] = {}
        for key, candidates in found.items():
            pair = self._pair(key, candidates)
            if pair is not None:
                pairs[key] = pair
                live = next(c for c in candidates if c[1].deployment == pair.deployments[
                    pair.live])
                other = next(c for c in candidates if c is not live)
                others[key] = (other_colour(pair.live), other[1])
                candidates = [live]
            spec, placement, _ = candidates[0]
            for _, extra, _ in candidates[1:]:
                self._warn_once(f"{spec.name} is claimed by both {placement.namespace}/"
                                f"{placement.deployment} and {extra.namespace}/"
                                f"{extra.deployment}: using the first")
            placements[key] = placement
            specs.append(spec)
        self._placements, self.pairs, self._others = placements, pairs, others
        wheres = {p.where for p in placements.values()} | {p.where for _, p in others.values()}
        for where in [w for w in self._known if w not in wheres]:
            for replica in self._known.pop(where).values():
                replica.gone()
                self._scaler.replica_exited(replica.key, replica, 0)
        self._scaler.sync_instances(specs, stop_removed=False)
        self._sync_endpoints(initial)
        self._sync_keys()

    def _pair(self, key: Key, candidates: list[tuple[InstanceSpec, Placement, Obj]]
              ) -> ColourPair | None:
        """The two colours of a production instance, if it has them."""
        spec = candidates[0][0]
        if spec.environment.kind != "production" or len(candidates) != 2:
            return None
        by_name = {c[1].deployment: c for c in candidates}
        names = {colour: f"{spec.service.name}-{colour}" for colour in COLOURS}
        if set(by_name) != set(names.values()) or \
                candidates[0][1].namespace != candidates[1][1].namespace:
            return None
        objs = {colour: by_name[name][2] for colour, name in names.items()}
        pair = ColourPair.of(candidates[0][1].namespace, names, objs)
        override = self._live_override.get(key)
        if override is not None:
            colour, seq = override
            if pair.live_seqs[colour] >= seq:
                del self._live_override[key]  # the cache has caught up with our switch
            else:
                pair = dataclasses.replace(pair, live=colour)
        return pair

    def _endpoints(self, placement: Placement) -> tuple[set[str], set[str]]:
        """(ready addresses, every address still listed, terminating ones included)."""
        ready: set[str] = set()
        present: set[str] = set()
        for (namespace, _), slice_ in self._slices.cache.items():
            labels = slice_.get("metadata", {}).get("labels") or {}
            if namespace != placement.namespace or \
                    labels.get(SERVICE_NAME_LABEL) != placement.deployment:
                continue
            ports = slice_.get("ports") or []
            port = next((p.get("port") for p in ports if p.get("name") == "http"), None) or \
                next((p.get("port") for p in ports if p.get("port")), None)
            if not port:
                continue
            ipv6 = slice_.get("addressType") == "IPv6"
            for endpoint in slice_.get("endpoints") or []:
                conditions = endpoint.get("conditions") or {}
                # Absent `ready` means ready (the API's rule); terminating never serves new work.
                serves = not (conditions.get("ready") is False
                              or conditions.get("terminating") is True)
                for address in endpoint.get("addresses") or []:
                    text = f"[{address}]:{port}" if ipv6 else f"{address}:{port}"
                    present.add(text)
                    if serves:
                        ready.add(text)
        return ready, present

    def _sync_endpoints(self, initial: bool) -> None:
        now_mono, now_wall = time.monotonic(), time.time()
        every = [(key, None, p) for key, p in self._placements.items()]
        every += [(key, colour, p) for key, (colour, p) in self._others.items()]
        for key, idle_colour, placement in every:
            where = placement.where
            ready, present = self._endpoints(placement)
            known = self._known.setdefault(where, {})
            leaving = self._leaving.get(where)
            if leaving is not None:
                leaving &= present  # forget addresses once they are really gone
                if not leaving and where in self._gone_events:
                    self._gone_events.pop(where).set()
            for address in [a for a in known if a not in ready]:
                replica = known.pop(address)
                replica.gone()
                self._scaler.replica_exited(key, replica, 0)
            for address in sorted(ready):
                if address in known or (leaving and address in leaving):
                    continue
                replica = EndpointReplica(key, where, address)
                known[address] = replica
                waiter = self._waiters.get(where)
                if waiter is not None:
                    waiter.add(replica)
                elif idle_colour is not None:
                    inst = self._scaler.instances.get(key)
                    if inst is not None:
                        self._scaler.releases.replica_appeared(inst, idle_colour, replica)
                else:
                    active_at = None
                    if initial and placement.persisted_activity is not None:
                        active_at = now_mono - max(0.0, now_wall - placement.persisted_activity)
                    self._scaler.replica_appeared(key, replica, active_at)

    def ready_replicas(self, where: Where) -> list[EndpointReplica]:
        return list(self._known.get(where, {}).values())

    def _sync_keys(self) -> None:
        for key in self._placements:
            digests = self.keys.hashes(*key)
            if self._key_digests.get(key, ()) != digests:
                self._key_digests[key] = digests
                if key in self._scaler.instances:
                    self._scaler.keys_changed(key)

    def _secret_written(self, secret: Obj) -> None:
        meta = secret.get("metadata", {})
        self._secrets.cache[(meta.get("namespace", ""), meta.get("name", ""))] = secret
        self._sync_keys()

    def _namespace_of(self, environment: str, service: str) -> str | None:
        placement = self._placements.get((environment, service))
        return placement.namespace if placement else None

    def _secret_of(self, environment: str, service: str) -> Obj | None:
        namespace = self._namespace_of(environment, service)
        if namespace is None or not self._informers:
            return None
        return self._secrets.cache.get((namespace, secret_name(service)))

    # --- scaling ---

    async def _scale(self, placement: Placement | None, target: int, at_least: bool) -> int:
        """Set the Deployment's replicas from a fresh read; with at_least, never lower them."""
        if placement is None:
            raise StartFailed("the Deployment is gone")
        apps = k8s.AppsV1Api(self._api_client())
        for _ in range(_SCALE_ATTEMPTS):
            if self.leader is None or not self.leader.is_leader:
                raise StartFailed("this controller is not the leader (any more)")
            scale = await call(apps.read_namespaced_deployment_scale,
                               placement.deployment, placement.namespace)
            current = int((scale.get("spec") or {}).get("replicas") or 0)
            if current == target or (at_least and current > target):
                return current
            scale.setdefault("spec", {})["replicas"] = target
            try:
                await call(apps.replace_namespaced_deployment_scale,
                           placement.deployment, placement.namespace, scale)
                log.info("scaled %s/%s from %d to %d replicas", placement.namespace,
                         placement.deployment, current, target)
                return target
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise StartFailed(f"the scale of {placement.namespace}/{placement.deployment} kept "
                          "changing under us")

    async def start(self, inst: InstanceSpec, version: str, count: int) -> list[Any]:
        if count <= 0:
            return []
        key = inst.key
        placement = self._placements.get(key)
        if placement is None:
            raise StartFailed(f"the Deployment of {inst.name} is gone")
        known = self._known.get(placement.where, {})
        limit = max(inst.environment.max_replicas, 1)
        replicas = await self._start_at(inst, placement, min(len(known) + count, limit))
        # Recorded at once: a controller taking over right after this wake
        # must not judge the instance by an older recorded activity.
        await self._record_activity(key, time.time())
        return replicas

    async def _start_at(self, inst: InstanceSpec, placement: Placement, target: int
                        ) -> list[EndpointReplica]:
        """Scale the Deployment to `target` and wait for the new ready endpoints."""
        where = placement.where
        before = len(self._known.get(where, {}))
        count = target - before
        if count <= 0:
            return []
        waiter = _StartWaiter(count)
        self._waiters[where] = waiter
        try:
            try:
                await self._scale(placement, target, at_least=True)
            except KubeError as exc:
                raise StartFailed(f"cannot scale the Deployment: {exc}") from None
            try:
                await asyncio.wait_for(waiter.done.wait(), inst.service.start_timeout)
            except TimeoutError:
                # Pods that never get ready (crash loop, unschedulable) must not
                # keep running for an instance that shows as not started.
                with contextlib.suppress(Exception):
                    await self._scale(placement, before + len(waiter.replicas), at_least=False)
                raise StartFailed(
                    f"{len(waiter.replicas)} of {count} new replicas ready within "
                    f"{inst.service.start_timeout:g}s (see kubectl describe deployment -n "
                    f"{placement.namespace} {placement.deployment})"
                ) from None
            return list(waiter.replicas)
        except BaseException:
            # Whatever became ready meanwhile is not lost: the scaler gets it as found.
            live = self._placements.get(inst.key)
            if live is not None and live.where == where:
                for replica in waiter.replicas:
                    if not replica.exited.done():
                        self._scaler.replica_appeared(inst.key, replica)
            raise
        finally:
            if self._waiters.get(where) is waiter:
                del self._waiters[where]

    async def stop(self, replicas: list[Any], grace: float) -> None:
        by_where: dict[Where, list[EndpointReplica]] = {}
        for replica in replicas:
            by_where.setdefault(replica.where, []).append(replica)
        for where, going in by_where.items():
            known = self._known.get(where, {})
            endpoints = {r.endpoint for r in going}
            remaining = len([a for a in known if a not in endpoints])
            await self._scale_down(Placement(*where, None), remaining, going, grace)

    async def _scale_down(self, placement: Placement, remaining: int,
                          going: list[EndpointReplica], grace: float) -> None:
        where = placement.where
        try:
            await self._scale(placement, remaining, at_least=False)
        except (KubeError, StartFailed) as exc:
            # Nothing stopped: the caller keeps the replicas, which still serve.
            raise StartFailed(f"could not scale {where[0]}/{where[1]} down: {exc}") from None
        known = self._known.get(where, {})
        leaving = self._leaving.setdefault(where, set())
        for replica in going:
            known.pop(replica.endpoint, None)
            leaving.add(replica.endpoint)
            replica.gone()
        # Asleep means stopped: wait until the pods have left the EndpointSlices
        # (they are gone when their process has exited), as the local runtime
        # waits for its processes.
        gone = self._gone_events.setdefault(where, asyncio.Event())
        self._changed()
        try:
            await asyncio.wait_for(gone.wait(), grace + 5.0)
        except TimeoutError:
            log.warning("%s/%s: pods still listed %gs after scaling down", where[0], where[1],
                        grace + 5.0)

    # --- versions, kept on the Deployment ---

    async def set_version(self, inst: InstanceSpec, version: str) -> None:
        """Point the Deployment at `version`; it rolls its pods itself, and a Deployment
        at 0 replicas just starts the new version at its next wake."""
        placement = self._placements.get(inst.key)
        if placement is None:
            raise LookupError(f"the Deployment of {inst.name} is gone")
        await self._patch_version(placement, version, {})

    async def _patch_version(self, placement: Placement, version: str,
                             annotations: dict[str, str]) -> None:
        """The image tag, wakegate.dev/version, and WAKEGATE_VERSION when the container has
        that variable; `annotations` too, in the same write."""
        deployment = self._deployments.cache.get(placement.where)
        containers = (((deployment or {}).get("spec") or {}).get("template") or {}) \
            .get("spec", {}).get("containers") or []
        if not containers:
            raise LookupError(f"the Deployment {placement.namespace}/{placement.deployment} "
                              "has no container")
        first = containers[0]
        repository = _image_repository(first.get("image", ""))
        container: dict[str, Any] = {"name": first["name"], "image": f"{repository}:{version}"}
        if any(e.get("name") == "WAKEGATE_VERSION" for e in first.get("env") or []):
            # A container that is told its version (as the local runtime does) is told again.
            container["env"] = [{"name": "WAKEGATE_VERSION", "value": version}]
        body = {
            "metadata": {"annotations": {VERSION_ANNOTATION: version, **annotations}},
            "spec": {"template": {
                "metadata": {"annotations": {VERSION_ANNOTATION: version}},
                "spec": {"containers": [container]},
            }},
        }
        apps = k8s.AppsV1Api(self._api_client())
        # A strategic merge patch: containers merge by name, the others stay.
        written = await call(apps.patch_namespaced_deployment, placement.deployment,
                             placement.namespace, body)
        self._deployment_written(written)

    def _deployment_written(self, obj: Obj) -> None:
        """Our own write, in the cache at once: the next pass must not act on the old one."""
        meta = obj.get("metadata", {})
        self._deployments.cache[(meta.get("namespace", ""), meta.get("name", ""))] = obj

    # --- blue/green (kube_colours.KubeColours drives these) ---

    def colours(self) -> KubeColours:
        return KubeColours(self)

    def colour_placement(self, key: Key, colour: str) -> Placement:
        pair = self.pairs.get(key)
        if pair is None:
            raise StartFailed(f"{key[0]}/{key[1]} has no blue/green Deployments any more")
        return Placement(pair.namespace, pair.deployments[colour], None)

    def _fresh_pair(self, key: Key) -> ColourPair:
        """The pair as the cache shows it now, our own latest writes included."""
        pair = self.pairs[key]
        objs = {c: self._deployments.cache.get((pair.namespace, name))
                for c, name in pair.deployments.items()}
        if not all(objs.values()):
            return pair
        return ColourPair.of(pair.namespace, pair.deployments,
                             {c: o for c, o in objs.items() if o is not None})

    async def start_colour(self, inst: InstanceSpec, colour: str, version: str,
                           size: int) -> list[EndpointReplica]:
        placement = self.colour_placement(inst.key, colour)
        seq = self._fresh_pair(inst.key).next_seq
        await self._patch_version(placement, version, {DEPLOYED_ANNOTATION: str(seq)})
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
        seq = self._fresh_pair(key).next_seq
        if self.leader is None or not self.leader.is_leader:
            raise StartFailed("this controller is not the leader (any more)")
        body = {"metadata": {"annotations": {
            LIVE_ANNOTATION: str(seq), LIVE_SINCE_ANNOTATION: format_micro_time(time.time()),
            LIVE_BY_ANNOTATION: verb}}}
        apps = k8s.AppsV1Api(self._api_client())
        # Until the write's answer is here, the old colour stays live for every
        # reconcile, even one that sees the write's watch event first: the
        # scaler moves the instance only after this returns.
        pinned = self._live_override.get(key)
        self._live_override[key] = (other_colour(colour), 1 << 62)
        try:
            written = await call(apps.patch_namespaced_deployment, placement.deployment,
                                 placement.namespace, body,
                                 _content_type="application/merge-patch+json")
        except BaseException:
            if pinned is None:
                self._live_override.pop(key, None)
            else:
                self._live_override[key] = pinned
            raise
        self._deployment_written(written)
        self._live_override[key] = (colour, seq)
        self._placements[key] = dataclasses.replace(placement, persisted_activity=None)
        self._others[key] = (other_colour(colour), Placement(old.namespace, old.deployment, None))
        self.pairs[key] = dataclasses.replace(self.pairs[key], live=colour)
        self._changed()

    # --- last activity, persisted on the Deployment ---

    async def _record_activity(self, key: Key, wall: float) -> None:
        placement = self._placements.get(key)
        if placement is None:
            return
        body = {"metadata": {"annotations": {ACTIVITY_ANNOTATION: format_micro_time(wall)}}}
        apps = k8s.AppsV1Api(self._api_client())
        try:
            await call(apps.patch_namespaced_deployment, placement.deployment,
                       placement.namespace, body, _content_type="application/merge-patch+json")
            self._persisted[key] = wall
        except KubeError as exc:  # retried by the periodic writer
            log.warning("could not record the activity of %s/%s: %s", key[0], key[1], exc)

    async def _persist_activity(self) -> None:
        interval = self._config.kubernetes.activity_persist_interval
        while True:
            await asyncio.sleep(interval)
            now_mono, now_wall = time.monotonic(), time.time()
            for key in list(self._placements):
                inst = self._scaler.instances.get(key)
                if inst is None or not inst.replicas:
                    continue
                try:
                    in_flight, last = self._scaler.activity(inst)
                    wall = now_wall if in_flight else now_wall - (now_mono - last)
                    if abs(wall - self._persisted.get(key, 0.0)) >= interval:
                        await self._record_activity(key, wall)
                except Exception as exc:  # never let one instance stop the writer
                    log.warning("could not record the activity of %s: %s", inst.name, exc)

    # --- the rest of the runtime interface ---

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
        return None


def _image_repository(image: str) -> str:
    """The image without its tag or digest (a registry's port is not a tag)."""
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition("/")
    name = tail.split(":", 1)[0]
    return f"{head}/{name}" if head else name


def _comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


__all__ = ["KubernetesRuntime", "hashes_in"]
