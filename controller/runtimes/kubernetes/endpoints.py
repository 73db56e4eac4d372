"""Replicas are ready endpoints: what the EndpointSlices of an instance's Service list.

The proxy forwards straight to the ready endpoint addresses, so a cold start
does not wait for kube-proxy. An address that appears is a replica: one a
start waits for, one of a production instance's idle colour, or one someone
else started (told to the scaler with the last activity recorded on the
Deployment, for a controller that just started). An address that stops being
ready is a replica gone. After a scale-down the addresses are kept as
leaving until the pods have left the slices, so that asleep means stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping

from ...model import Key
from ..base import RuntimeEvents
from .client import Obj, ObjKey
from .discovery import Placement, Where

SERVICE_NAME_LABEL = "kubernetes.io/service-name"


class EndpointReplica:
    """A ready endpoint of an instance's Deployment, and the pod behind it ("" if unnamed)."""

    __slots__ = ("endpoint", "exited", "key", "pod", "where")

    def __init__(self, key: Key, where: Where, endpoint: str, pod: str = "") -> None:
        self.key = key
        self.where = where
        self.endpoint = endpoint
        self.pod = pod  # a scale-down marks it as the one to go (scale.py)
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def gone(self) -> None:
        if not self.exited.done():
            self.exited.set_result(0)


class StartWaiter:
    """A start under way: the first `count` new ready endpoints are its replicas."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.replicas: list[EndpointReplica] = []
        self.done = asyncio.Event()

    def add(self, replica: EndpointReplica) -> None:
        self.replicas.append(replica)
        if len(self.replicas) >= self.count:
            self.done.set()


def addresses(slices: Mapping[ObjKey, Obj], placement: Placement
              ) -> tuple[dict[str, str], set[str]]:
    """(ready address → its pod's name, every address still listed, terminating ones
    included)."""
    ready: dict[str, str] = {}
    present: set[str] = set()
    for (namespace, _), slice_ in slices.items():
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
            target = endpoint.get("targetRef") or {}
            pod = str(target.get("name") or "") if target.get("kind") == "Pod" else ""
            for address in endpoint.get("addresses") or []:
                text = f"[{address}]:{port}" if ipv6 else f"{address}:{port}"
                present.add(text)
                if serves:
                    ready[text] = pod
    return ready, present


# What to follow: (instance, idle colour or None for the live one, its Deployment).
Followed = tuple[Key, str | None, Placement]


class EndpointTracker:
    """The replicas of every followed Deployment, kept in step with the slices."""

    def __init__(self) -> None:
        self.known: dict[Where, dict[str, EndpointReplica]] = {}
        self.leaving: dict[Where, set[str]] = {}
        self.waiters: dict[Where, StartWaiter] = {}
        self.gone_events: dict[Where, asyncio.Event] = {}

    def ready_replicas(self, where: Where) -> list[EndpointReplica]:
        return list(self.known.get(where, {}).values())

    def drop_unfollowed(self, wheres: set[Where], events: RuntimeEvents) -> None:
        """Deployments no longer followed: their replicas are gone."""
        for where in [w for w in self.known if w not in wheres]:
            for replica in self.known.pop(where).values():
                replica.gone()
                events.replica_exited(replica.key, replica, 0)

    def sync(self, slices: Mapping[ObjKey, Obj], followed: Iterable[Followed],
             events: RuntimeEvents, initial: bool) -> None:
        """Tell `events` what appeared and what went since the last pass."""
        now_mono, now_wall = time.monotonic(), time.time()
        for key, idle_colour, placement in followed:
            where = placement.where
            ready, present = addresses(slices, placement)
            known = self.known.setdefault(where, {})
            leaving = self.leaving.get(where)
            if leaving is not None:
                leaving &= present  # forget addresses once they are really gone
                if not leaving and where in self.gone_events:
                    self.gone_events.pop(where).set()
            for address in [a for a in known if a not in ready]:
                replica = known.pop(address)
                replica.gone()
                events.replica_exited(key, replica, 0)
            for address in sorted(ready):
                if address in known or (leaving and address in leaving):
                    continue
                replica = EndpointReplica(key, where, address, ready[address])
                known[address] = replica
                waiter = self.waiters.get(where)
                if waiter is not None:
                    waiter.add(replica)
                elif idle_colour is not None:
                    events.colour_replica_appeared(key, idle_colour, replica)
                else:
                    active_at = None
                    if initial and placement.persisted_activity is not None:
                        active_at = now_mono - max(0.0, now_wall - placement.persisted_activity)
                    events.replica_appeared(key, replica, active_at)

    def left(self, where: Where, going: list[EndpointReplica]) -> asyncio.Event:
        """Scaled down: `going` are gone now; the event is set once the pods have left the
        slices."""
        known = self.known.get(where, {})
        leaving = self.leaving.setdefault(where, set())
        for replica in going:
            known.pop(replica.endpoint, None)
            leaving.add(replica.endpoint)
            replica.gone()
        return self.gone_events.setdefault(where, asyncio.Event())
