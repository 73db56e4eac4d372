"""Discovery: which environments and instances the cluster holds, read off its objects.

A namespace labelled `wakegate.dev/environment` (and `wakegate.dev/kind`) is
an environment, until it is deleted (metadata.deletionTimestamp: it is being
emptied); one of kind `ephemeral` holds its record (ephemeral_records.py) and
gets the ephemeral settings (controller/ephemeral_specs.py). The prefix of an
environment is prefixes.py's. A Deployment there annotated
`wakegate.dev/service` is an instance, served by the Service of the same name.
Annotations override the environment's idle and hold timeouts and the
service's ignored paths and dependencies (`wakegate.dev/depends-on: "api,db"`;
without it, the configured service's depends_on); the autoscale settings are
annotations of the namespace (the environment's) and of the Deployment (the
service's overrides; autoscale_annotations.py). A production service with
Deployments `{prefix}-<service>-blue` and `-green` (or, set up before prefixes,
`<service>-blue` and `<service>-green`) has two colours (colours.py); the live
one is the instance.

Pure functions of the informers' caches and the config: whatever is wrong
with an object is said once (`warn`) and the object is passed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ...ephemeral_specs import ephemeral_environment, ephemeral_name_problem
from ...model import Key, other_colour
from ...names import is_dns_label, is_environment_name
from ...spec import EPHEMERAL, KIND_DEFAULTS, KINDS, Config, Environment, InstanceSpec, Service
from ...units import parse_duration
from .autoscale_annotations import read_autoscale
from .client import Obj, ObjKey, deployment_version, parse_micro_time
from .colours import ColourPair
from .ephemeral_records import ENVIRONMENT_LABEL, KIND_LABEL, being_deleted, record_of
from .prefixes import colour_names, prefix_of

SERVICE_ANNOTATION = "wakegate.dev/service"
IDLE_TIMEOUT_ANNOTATION = "wakegate.dev/idle-timeout"
HOLD_TIMEOUT_ANNOTATION = "wakegate.dev/hold-timeout"
IGNORE_PATHS_ANNOTATION = "wakegate.dev/ignore-paths"
IGNORE_USER_AGENTS_ANNOTATION = "wakegate.dev/ignore-user-agents"
ACTIVITY_ANNOTATION = "wakegate.dev/last-activity"
DEPENDS_ON_ANNOTATION = "wakegate.dev/depends-on"

Where = tuple[str, str]  # (namespace, Deployment name)
Warn = Callable[[str], None]
# Our own colour switches, until the cache shows them: key → (live colour, its step).
LiveOverrides = dict[Key, tuple[str, int]]


@dataclasses.dataclass(frozen=True)
class Placement:
    namespace: str
    deployment: str  # also the name of the Service whose EndpointSlices hold the replicas
    persisted_activity: float | None  # wall-clock seconds, from the annotation

    @property
    def where(self) -> Where:
        return (self.namespace, self.deployment)


@dataclasses.dataclass
class Discovered:
    specs: list[InstanceSpec]
    placements: dict[Key, Placement]  # the live Deployment of each instance
    pairs: dict[Key, ColourPair]  # blue/green instances: their two colours
    others: dict[Key, tuple[str, Placement]]  # ... and where the idle one is
    environments: dict[str, Environment]  # namespace → the environment it is


def environments(namespaces: Mapping[ObjKey, Obj], config: Config, warn: Warn
                 ) -> dict[str, Environment]:
    """namespace → environment, for every correctly labelled namespace not being deleted."""
    found: dict[str, Environment] = {}
    for (_, namespace), obj in namespaces.items():
        if being_deleted(obj):
            continue  # its environment is gone, whatever is still in it
        labels = obj.get("metadata", {}).get("labels") or {}
        name = labels.get(ENVIRONMENT_LABEL, "")
        kind = labels.get(KIND_LABEL) or (name if name in KINDS else "")
        if not is_environment_name(name):
            warn(f"namespace {namespace}: {ENVIRONMENT_LABEL}={name!r} is not a valid "
                 "environment name (1-24 letters, digits, dashes)")
            continue
        if kind not in KINDS:
            warn(f"namespace {namespace}: {KIND_LABEL}={kind!r} is not one of {', '.join(KINDS)}")
            continue
        configured = config.environments.get(name)
        if kind == EPHEMERAL:
            record = record_of(obj, warn)
            if record is None:
                continue
            problem = ephemeral_name_problem(name)
            if problem is not None:
                warn(f"namespace {namespace}: ephemeral environment {name!r}: the name "
                     f"{problem}; it is no environment")
                continue
            env = ephemeral_environment(record, config.environments.get(record.source),
                                        config.ephemeral)
        elif configured is not None and configured.kind == kind:
            env = configured
        else:
            d = KIND_DEFAULTS[kind]
            env = Environment(
                name=name, kind=kind, access=d.access, idle_timeout=d.idle_timeout,
                min_replicas=d.min_replicas, max_replicas=d.max_replicas,
            )
        prefix = "" if kind == EPHEMERAL else prefix_of(obj, kind, configured, warn)
        autoscale = read_autoscale(obj.get("metadata", {}).get("annotations") or {},
                                   env.autoscale, f"namespace {namespace}", warn)
        if autoscale:
            env = dataclasses.replace(
                env, autoscale=dataclasses.replace(env.autoscale, **autoscale))
        if env.prefix != prefix:
            env = dataclasses.replace(env, prefix=prefix)
        found[namespace] = env
    return _without_impostors(found, config, warn)


def _without_impostors(found: dict[str, Environment], config: Config, warn: Warn
                       ) -> dict[str, Environment]:
    """Without an ephemeral namespace that claims the name of another environment (the
    config's, or a namespace's of another kind): it must never take that one's routes, nor
    open a private environment as a public copy."""
    others = {env.name.lower() for env in found.values() if env.kind != EPHEMERAL}
    others |= {name.lower() for name in config.environments}
    kept: dict[str, Environment] = {}
    for namespace, env in found.items():
        if env.kind == EPHEMERAL and env.name.lower() in others:
            warn(f"namespace {namespace}: ephemeral environment {env.name!r} has the name of "
                 "another environment; it is no environment")
            continue
        kept[namespace] = env
    return kept


def instance_of(env: Environment, deployment: Obj, config: Config, warn: Warn
                ) -> tuple[InstanceSpec, Placement] | None:
    """The instance an annotated Deployment is, or None."""
    meta = deployment.get("metadata", {})
    annotations = meta.get("annotations") or {}
    service = annotations.get(SERVICE_ANNOTATION)
    if service is None:
        return None
    where = f"deployment {meta.get('namespace')}/{meta.get('name')}"
    if not is_dns_label(service):
        warn(f"{where}: {SERVICE_ANNOTATION}={service!r} is not a DNS label")
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
            warn(f"{where}: {annotation}: {exc}; using the environment's value")
    if overrides:
        env = dataclasses.replace(env, **overrides)
    spec = InstanceSpec(env, Service(
        name=service, command="", version=deployment_version(deployment, env.prefix),
        environments=(env.name,),
        depends_on=depends_on(annotations, config.services.get(service), where, warn),
        ignore_paths=_comma_list(annotations.get(IGNORE_PATHS_ANNOTATION)),
        ignore_user_agents=_comma_list(annotations.get(IGNORE_USER_AGENTS_ANNOTATION)),
        autoscale_overrides=tuple(read_autoscale(annotations, env.autoscale, where,
                                                 warn).items()),
    ))
    persisted = parse_micro_time(annotations.get(ACTIVITY_ANNOTATION))
    return spec, Placement(meta.get("namespace", ""), meta.get("name", ""), persisted)


Candidate = tuple[InstanceSpec, Placement, Obj]


def pair_of(key: Key, candidates: list[Candidate], overrides: LiveOverrides
            ) -> ColourPair | None:
    """The two colours of a production instance, if it has them (an override of ours that the
    cache has caught up with is dropped from `overrides`)."""
    spec = candidates[0][0]
    if spec.environment.kind != "production" or len(candidates) != 2:
        return None
    by_name = {c[1].deployment: c for c in candidates}
    names = next((n for n in colour_names(spec.service.name, spec.environment.prefix)
                  if set(n.values()) == set(by_name)), None)
    if names is None or candidates[0][1].namespace != candidates[1][1].namespace:
        return None
    objs = {colour: by_name[name][2] for colour, name in names.items()}
    pair = ColourPair.of(candidates[0][1].namespace, names, objs, spec.environment.prefix)
    override = overrides.get(key)
    if override is not None:
        colour, seq = override
        if pair.live_seqs[colour] >= seq:
            del overrides[key]  # the cache has caught up with our switch
        else:
            pair = dataclasses.replace(pair, live=colour)
    return pair


def discover(namespaces: Mapping[ObjKey, Obj], deployments: Mapping[ObjKey, Obj],
             config: Config, overrides: LiveOverrides, warn: Warn) -> Discovered:
    """Every instance the cluster holds, where its Deployments are, and its colours."""
    envs = environments(namespaces, config, warn)
    found: dict[Key, list[Candidate]] = {}
    for (namespace, _), obj in sorted(deployments.items()):
        env = envs.get(namespace)
        if env is None:
            continue
        instance = instance_of(env, obj, config, warn)
        if instance is not None:
            found.setdefault(instance[0].key, []).append((*instance, obj))
    result = Discovered([], {}, {}, {}, envs)
    for key, candidates in found.items():
        pair = pair_of(key, candidates, overrides)
        if pair is not None:
            result.pairs[key] = pair
            live = next(c for c in candidates if c[1].deployment == pair.deployments[pair.live])
            other = next(c for c in candidates if c is not live)
            result.others[key] = (other_colour(pair.live), other[1])
            candidates = [live]
        spec, placement, _ = candidates[0]
        for _, extra, _ in candidates[1:]:
            warn(f"{spec.name} is claimed by both {placement.namespace}/{placement.deployment} "
                 f"and {extra.namespace}/{extra.deployment}: using the first")
        result.placements[key] = placement
        result.specs.append(spec)
    return result


def depends_on(annotations: Mapping[str, str], configured: Service | None, where: str,
               warn: Warn) -> tuple[str, ...]:
    """`wakegate.dev/depends-on: "api,db"`, else the configured service's depends_on."""
    raw = annotations.get(DEPENDS_ON_ANNOTATION)
    if raw is None:
        return configured.depends_on if configured is not None else ()
    names: list[str] = []
    for name in _comma_list(raw):
        if not is_dns_label(name) or name == annotations.get(SERVICE_ANNOTATION):
            warn(f"{where}: {DEPENDS_ON_ANNOTATION}: {name!r} is not another service's name "
                 "(a DNS label); left out")
        elif name not in names:
            names.append(name)
    return tuple(names)


def _comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())
