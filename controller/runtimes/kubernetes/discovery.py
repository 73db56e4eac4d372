"""Discovery: which environments and instances the cluster holds, read off its objects.

A namespace labelled `wakegate.dev/environment` (and `wakegate.dev/kind`) is
an environment; a Deployment there annotated `wakegate.dev/service` is an
instance, served by the Service of the same name. Annotations override the
environment's idle and hold timeouts and the service's ignored paths; the
autoscale settings are annotations of the namespace (the environment's) and
of the Deployment (the service's overrides; autoscale_annotations.py). A
production service with Deployments `<service>-blue` and `<service>-green`
has two colours (colours.py); the live one is the instance.

Pure functions of the informers' caches and the config: whatever is wrong
with an object is said once (`warn`) and the object is passed over.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ...model import COLOURS, Key, other_colour
from ...names import is_dns_label, is_environment_name
from ...spec import KIND_DEFAULTS, KINDS, Config, Environment, InstanceSpec, Service
from ...units import parse_duration
from .autoscale_annotations import read_autoscale
from .client import Obj, ObjKey, deployment_version, parse_micro_time
from .colours import ColourPair

ENVIRONMENT_LABEL = "wakegate.dev/environment"
KIND_LABEL = "wakegate.dev/kind"
SERVICE_ANNOTATION = "wakegate.dev/service"
IDLE_TIMEOUT_ANNOTATION = "wakegate.dev/idle-timeout"
HOLD_TIMEOUT_ANNOTATION = "wakegate.dev/hold-timeout"
IGNORE_PATHS_ANNOTATION = "wakegate.dev/ignore-paths"
IGNORE_USER_AGENTS_ANNOTATION = "wakegate.dev/ignore-user-agents"
ACTIVITY_ANNOTATION = "wakegate.dev/last-activity"

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


def environments(namespaces: Mapping[ObjKey, Obj], config: Config, warn: Warn
                 ) -> dict[str, Environment]:
    """namespace → environment, for every correctly labelled namespace."""
    found: dict[str, Environment] = {}
    for (_, namespace), obj in namespaces.items():
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
        if configured is not None and configured.kind == kind:
            env = configured
        else:
            d = KIND_DEFAULTS[kind]
            env = Environment(
                name=name, kind=kind, access=d.access, idle_timeout=d.idle_timeout,
                min_replicas=d.min_replicas, max_replicas=d.max_replicas,
            )
        autoscale = read_autoscale(obj.get("metadata", {}).get("annotations") or {},
                                   env.autoscale, f"namespace {namespace}", warn)
        if autoscale:
            env = dataclasses.replace(
                env, autoscale=dataclasses.replace(env.autoscale, **autoscale))
        found[namespace] = env
    return found


def instance_of(env: Environment, deployment: Obj, warn: Warn
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
        name=service, command="", version=deployment_version(deployment),
        environments=(env.name,),
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
    names = {colour: f"{spec.service.name}-{colour}" for colour in COLOURS}
    if set(by_name) != set(names.values()) or \
            candidates[0][1].namespace != candidates[1][1].namespace:
        return None
    objs = {colour: by_name[name][2] for colour, name in names.items()}
    pair = ColourPair.of(candidates[0][1].namespace, names, objs)
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
        instance = instance_of(env, obj, warn)
        if instance is not None:
            found.setdefault(instance[0].key, []).append((*instance, obj))
    result = Discovered([], {}, {}, {})
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


def _comma_list(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())
