"""Blue/green on Kubernetes: production's two colours kept on their Deployments.

A production service with Deployments `<service>-blue` and `<service>-green`
(`{prefix}-<service>-blue|green` with the environment's prefix, see
prefixes.py; each with a Service of the same name) has two colours. Nothing else holds
the release state, so any controller (a restarted one, the next leader) reads
it back from the cluster:

- `wakegate.dev/release-deployed: N` on a colour: a version was deployed to it
  as the N-th release step of the service;
- `wakegate.dev/release-live: N`, `-live-since`, `-live-by` on the live colour:
  it became live as step N, at that time, by a promote or a rollback.

The live colour is the one with the higher `release-live` (blue when neither
was ever switched). Every step takes a number above all recorded ones, so a
switch is a single write to one object, atomic by itself: there is no moment
when production has no live colour, or two. The idle colour is the *preview*
when it was deployed after the live one went live, else the *previous* one
(if there ever was a switch).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Protocol

from ...model import (
    COLOURS,
    PREVIEW,
    PREVIOUS,
    Instance,
    OtherColour,
    Release,
    Replica,
    other_colour,
)
from ...spec import InstanceSpec
from .client import Obj, ObjKey, deployment_version, parse_micro_time

DEPLOYED_ANNOTATION = "wakegate.dev/release-deployed"
LIVE_ANNOTATION = "wakegate.dev/release-live"
LIVE_SINCE_ANNOTATION = "wakegate.dev/release-live-since"
LIVE_BY_ANNOTATION = "wakegate.dev/release-live-by"

__all__ = ["ColourPair", "KubeColours"]


def _seq(annotations: dict[str, str], name: str) -> int:
    try:
        return max(int(annotations.get(name) or 0), 0)
    except ValueError:
        return 0


@dataclasses.dataclass(frozen=True)
class ColourPair:
    """The two colour Deployments of one production instance, as the cluster shows them."""

    namespace: str
    deployments: dict[str, str]  # colour → Deployment name
    live: str
    versions: dict[str, str]
    desired: dict[str, int]  # spec.replicas
    deployed_seqs: dict[str, int]
    live_seqs: dict[str, int]
    live_since: float | None  # wall clock, of the live colour
    live_by: str | None

    @classmethod
    def of(cls, namespace: str, names: dict[str, str], objs: dict[str, Obj],
           prefix: str) -> ColourPair:
        notes = {c: o.get("metadata", {}).get("annotations") or {} for c, o in objs.items()}
        live_seqs = {c: _seq(notes[c], LIVE_ANNOTATION) for c in COLOURS}
        live = "green" if live_seqs["green"] > live_seqs["blue"] else "blue"
        return cls(
            namespace=namespace, deployments=names, live=live,
            versions={c: deployment_version(objs[c], prefix) for c in COLOURS},
            desired={c: int((objs[c].get("spec") or {}).get("replicas") or 0) for c in COLOURS},
            deployed_seqs={c: _seq(notes[c], DEPLOYED_ANNOTATION) for c in COLOURS},
            live_seqs=live_seqs,
            live_since=parse_micro_time(notes[live].get(LIVE_SINCE_ANNOTATION)),
            live_by=notes[live].get(LIVE_BY_ANNOTATION),
        )

    @property
    def next_seq(self) -> int:
        return max(*self.deployed_seqs.values(), *self.live_seqs.values()) + 1

    def idle_role(self) -> str | None:
        idle = other_colour(self.live)
        if self.deployed_seqs[idle] > self.live_seqs[self.live]:
            return PREVIEW
        if self.live_seqs[self.live] > 0 or self.live_seqs[idle] > 0:
            return PREVIOUS
        return None  # never used: nothing to promote or roll back to


class ColourDeployments(Protocol):
    """What the colour store needs of the runtime: the pairs it found, and their writes."""

    pairs: dict[tuple[str, str], ColourPair]  # by (environment, service)

    def ready_replicas(self, where: ObjKey) -> list[Replica]: ...

    async def start_colour(self, inst: InstanceSpec, colour: str, version: str,
                           size: int) -> list[Replica]: ...

    async def stop_colour(self, inst: InstanceSpec, colour: str, grace: float) -> None: ...

    async def switch_live(self, inst: InstanceSpec, colour: str, verb: str) -> None: ...


class KubeColours:
    """The colour store of the Kubernetes runtime (see runtimes.base.ColourStore)."""

    def __init__(self, runtime: ColourDeployments) -> None:
        self._runtime = runtime

    def refused(self, inst: Instance) -> str | None:
        if inst.key in self._runtime.pairs:
            return None
        service, prefix = inst.spec.service.name, inst.spec.environment.prefix
        prefixed = (f" (or, with the environment's prefix, {prefix}-{service}-blue and "
                    f"{prefix}-{service}-green)" if prefix else "")
        return (f"{inst.name} has no blue/green Deployments: create {service}-blue and "
                f"{service}-green{prefixed}, each with a Service of the same name and the "
                f"annotation wakegate.dev/service: {service}, in its namespace")

    def load(self, inst: Instance) -> Release:
        pair = self._runtime.pairs.get(inst.key)
        if pair is None:
            return Release()
        release = Release(live=pair.live, last=pair.live_by)
        role = pair.idle_role()
        if role is None:
            return release
        idle = other_colour(pair.live)
        where = (pair.namespace, pair.deployments[idle])
        other = OtherColour(idle, pair.versions[idle], role,
                            list(self._runtime.ready_replicas(where)))
        if role == PREVIOUS and pair.desired[idle] > 0:
            # Still running after a switch: scaled down at the recorded time.
            delay = inst.spec.environment.scale_down_delay
            since = pair.live_since if pair.live_since is not None else time.time()
            other.scale_down_at = time.monotonic() + max(since + delay - time.time(), 0.0)
        release.other = other
        return release

    def save(self, inst: Instance, release: Release) -> None:
        return None  # every change was written to the Deployments as it was made

    async def start(self, inst: Instance, colour: str, version: str, size: int,
                    running: list[Replica]) -> list[Replica]:
        return await self._runtime.start_colour(inst.spec, colour, version, size)

    async def stop(self, inst: Instance, colour: str, replicas: list[Replica],
                   grace: float) -> None:
        await self._runtime.stop_colour(inst.spec, colour, grace)

    async def switch(self, inst: Instance, release: Release, live: str, verb: str) -> None:
        await self._runtime.switch_live(inst.spec, live, verb)
