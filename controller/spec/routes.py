"""The route table: what the controller publishes and every proxy applies."""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from .model import Access


@dataclass(frozen=True, slots=True)
class Route:
    environment: str
    service: str
    host: str
    access: Access
    state: str
    endpoints: tuple[str, ...]  # "127.0.0.1:port", ready replicas only
    key_hashes: tuple[bytes, ...]  # SHA-256 digests of the valid API keys
    hold_timeout: float
    hold_queue_size: int
    ignore_paths: tuple[str, ...]
    ignore_user_agents: tuple[str, ...]
    version: str
    # Bumped on every failed activation, so a held request can tell a fresh
    # failure from an old one it saw before it started waiting.
    failures: int = 0
    error: str | None = None
    wake_strategy: str = "hold"
    # Monotonic-clock second until which the instance is in crash back-off (0:
    # not): no start is tried, and requests get 503 with the time left.
    backoff_until: float = 0.0

    @property
    def key(self) -> tuple[str, str]:
        return (self.environment, self.service)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """An immutable snapshot, swapped atomically; lookups are one dict access."""

    version: int
    by_host: MappingProxyType[str, Route]
    by_key: MappingProxyType[tuple[str, str], Route]

    @staticmethod
    def build(version: int, routes: list[Route]) -> RouteTable:
        return RouteTable(
            version,
            MappingProxyType({r.host: r for r in routes}),
            MappingProxyType({r.key: r for r in routes}),
        )


EMPTY_TABLE = RouteTable.build(0, [])


