"""HorizontalPodAutoscalers: a Deployment that one scales is left to it.

An HPA and wakegate both setting one Deployment's replicas would fight (each
undoing the other's step), so wakegate does not scale by load a Deployment
that an `autoscaling/v2` HPA targets: it says so once and leaves the count to
the HPA. Waking from zero and sleeping to zero still work (an HPA does not act
on a Deployment at 0 replicas).
"""

from __future__ import annotations

from collections.abc import Mapping

from ...model import Key
from .client import Obj, ObjKey
from .discovery import Placement, Warn, Where


def hpa_targets(hpas: Mapping[ObjKey, Obj]) -> dict[Where, str]:
    """(namespace, Deployment) → the name of an HPA that scales it."""
    targets: dict[Where, str] = {}
    for (namespace, name), hpa in sorted(hpas.items()):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        group = str(ref.get("apiVersion") or "apps/v1").split("/", 1)[0]
        if ref.get("kind") == "Deployment" and group == "apps" and ref.get("name"):
            targets.setdefault((namespace, str(ref["name"])), name)
    return targets


def autoscaled(placements: Mapping[Key, Placement], hpas: Mapping[ObjKey, Obj], warn: Warn
               ) -> set[Key]:
    """The instances whose live Deployment an HPA scales, each said (once, by `warn`)."""
    targets = hpa_targets(hpas)
    found: set[Key] = set()
    for key, placement in placements.items():
        hpa = targets.get(placement.where)
        if hpa is None:
            continue
        found.add(key)
        namespace, deployment = placement.where
        warn(f"{key[0]}/{key[1]}: the HorizontalPodAutoscaler {namespace}/{hpa} scales "
             f"deployment {namespace}/{deployment}: wakegate leaves its replica count to it "
             "(no scaling by load; waking and sleeping still work)")
    return found
