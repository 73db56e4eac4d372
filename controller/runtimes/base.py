"""What the scaler needs from a runtime, whichever one actually starts things.

A replica is anything with an address the proxy can forward to and a future
that resolves when it is gone. The local runtime's replicas are processes;
the Kubernetes runtime's are ready endpoints of a Deployment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ..spec import InstanceSpec

Key = tuple[str, str]


class StartFailed(Exception):
    pass


class ReplicaLike(Protocol):
    endpoint: str  # "host:port"
    exited: asyncio.Future[int]


class RuntimeEvents(Protocol):
    """Callbacks a runtime makes into the scaler."""

    def replica_exited(self, key: Key, replica: ReplicaLike, code: int) -> None: ...


ExitCallback = Callable[[Key, ReplicaLike, int], None]


class Runtime(Protocol):
    # True when the platform restarts dead replicas itself (Kubernetes):
    # the scaler then never restarts an always-on instance on its own.
    self_healing: bool
    # True when an instance's version is kept on the platform's objects
    # (Kubernetes) rather than in wakegate's state_dir.
    versions_on_objects: bool

    async def open(self) -> None:
        """Connect and learn the current state; returns when the scaler may act."""

    async def start(self, inst: InstanceSpec, version: str, count: int) -> list[ReplicaLike]:
        """`count` more ready replicas, or StartFailed with none left behind."""

    async def stop(self, replicas: list[ReplicaLike], grace: float) -> None: ...

    async def shutdown(self, grace: float) -> None: ...

    def kill_all_now(self) -> None: ...

    def log_path(self, inst: InstanceSpec) -> str: ...
