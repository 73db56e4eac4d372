"""The controller's model: instances, their replicas, production's two colours. Data only.

At the bottom of the control plane, beside spec (what the config says and the
proxies are sent): the state machine (scaler.py), the release commands
(releases.py), the route table (routes.py) and the runtimes' ports
(runtimes/base.py) all read and write these records, and none of them has to
import another to share them. What changes an instance's state is the
scaler's and the release commands' business; the states themselves are named
here once (the same words the route table carries to the proxies).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from .spec import FAILED, READY, SLEEPING, STARTING, STOPPING, Access, InstanceSpec

__all__ = [
    "COLOURS",
    "FAILED",
    "PREVIEW",
    "PREVIOUS",
    "PROMOTE",
    "READY",
    "ROLLBACK",
    "SLEEPING",
    "STABLE_AFTER",
    "STARTING",
    "STOPPING",
    "ActivitySource",
    "EphemeralRecord",
    "Instance",
    "Key",
    "OtherColour",
    "Release",
    "Replica",
    "other_colour",
]

Key = tuple[str, str]  # (environment, service)
# Where an instance's activity is counted (a proxy): (requests in flight, monotonic time
# the last one ended).
ActivitySource = Callable[[Key], tuple[int, float]]

# A replica that exits sooner than this after the instance became ready did not
# really start: it counts as a failed start for the crash back-off (as a
# container that keeps exiting does for Kubernetes' CrashLoopBackOff).
STABLE_AFTER = 10.0


class Replica(Protocol):
    """Anything with an address the proxy can forward to and a future that resolves when it is
    gone: a local process, a ready endpoint of a Deployment."""

    endpoint: str  # "host:port"
    exited: asyncio.Future[int]


# --- ephemeral environments ---


@dataclass(frozen=True)
class EphemeralRecord:
    """An ephemeral environment as its runtime keeps it (local: ephemeral.json; Kubernetes:
    its namespace's labels and annotations), so that it and its expiry survive a restart."""

    name: str
    source: str  # the environment it was made from
    access: Access
    created: float  # epoch seconds
    expires: float  # epoch seconds: deleted from then on
    versions: tuple[tuple[str, str], ...]  # (service, version) of every service it runs


# --- production's two colours ---

COLOURS = ("blue", "green")
PREVIEW = "preview"  # the idle colour runs a version deployed after the live one went live
PREVIOUS = "previous"  # the idle colour was live before the last switch
PROMOTE = "promote"
ROLLBACK = "rollback"


def other_colour(colour: str) -> str:
    return COLOURS[1 - COLOURS.index(colour)]


@dataclass
class OtherColour:
    """The colour that is not live: a preview, or the previous live one until it scales down."""

    colour: str
    version: str
    role: str  # PREVIEW or PREVIOUS
    replicas: list[Replica] = field(default_factory=list)
    scale_down_at: float | None = None  # monotonic
    scale_down: asyncio.Task[None] | None = None


@dataclass
class Release:
    """A production instance's colours: which is live, and what the other one runs."""

    live: str = "blue"
    other: OtherColour | None = None
    last: str | None = None  # PROMOTE or ROLLBACK: the switch that made `live` live
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def preview(self) -> OtherColour | None:
        """The other colour when it is a preview (the prerelease host shows it)."""
        other = self.other
        return other if other is not None and other.role == PREVIEW else None


# --- instances ---


class Instance:
    """The controller's mutable record of one (environment, service)."""

    def __init__(self, spec: InstanceSpec, host: str, version: str) -> None:
        # Fixed for the record's life: a changed spec (sync_instances) is the same instance.
        self.key: Key = spec.key
        self.name = spec.name  # "environment/service", for messages
        self.spec = spec
        self.host = host
        self.state = SLEEPING
        self.version = version
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
        # Production only: its colours, once loaded from the runtime's colour store.
        self.release: Release | None = None
        # Scaling by load (scaling.py): the replicas it wants now (0: not scaled by load
        # now), and the concurrency averaged over its stable window (None: not scaled by
        # load here, by wakegate).
        self.desired_replicas = 0
        self.concurrency: float | None = None

    # --- the state, in the words the route table carries ---

    def became_ready(self, since: float | None = None) -> None:
        """Replicas serve (from `since`, monotonic; now when not given)."""
        self.state = READY
        self.error = None
        self.ready_since = time.monotonic() if since is None else since

    def live_replicas(self) -> list[Replica]:
        """The replicas that serve: one whose end was seen but not yet handled does not (it
        is never routed to, nor counted as ready)."""
        return [r for r in self.replicas if not r.exited.done()]

    def desired(self) -> int:
        """Replicas wanted now: the load's while it is scaled by load, else the state's."""
        if self.state not in (READY, STARTING):
            return 0  # asleep, or going to sleep
        return self.desired_replicas or max(self.spec.environment.min_replicas, 1)

    def fell_asleep(self) -> None:
        """No replica is left: the next request wakes it."""
        self.state = SLEEPING
        self.ready_since = 0.0

    # --- crash back-off ---

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
