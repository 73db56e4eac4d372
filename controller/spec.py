"""The environment/service model and the route table.

This is the only controller module the proxy imports: it holds plain, frozen
data and no I/O, so the data plane never depends on the control plane's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Access = Literal["public", "api_key"]

# Instance states as the proxy sees them in the route table.
SLEEPING = "sleeping"  # no replica; a request wakes it
STARTING = "starting"  # activation under way
READY = "ready"  # endpoints serve
STOPPING = "stopping"  # going to sleep; a request is held and wakes it again
FAILED = "failed"  # the last activation failed; held requests get 503 at once

KINDS = ("private", "demo", "development", "staging", "production", "prerelease")


@dataclass(frozen=True, slots=True)
class KindDefaults:
    access: Access
    idle_timeout: float | None  # seconds; None: never sleeps
    min_replicas: int
    max_replicas: int


# DESIGN.md's first table.
KIND_DEFAULTS: dict[str, KindDefaults] = {
    "private": KindDefaults("api_key", 15 * 60.0, 0, 1),
    "demo": KindDefaults("public", 15 * 60.0, 0, 1),
    "development": KindDefaults("public", 30 * 60.0, 0, 2),
    "staging": KindDefaults("public", None, 1, 2),
    "production": KindDefaults("public", None, 2, 10),
    "prerelease": KindDefaults("public", None, 2, 10),
}

DEFAULT_HOLD_TIMEOUT = 60.0
DEFAULT_HOLD_QUEUE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class Environment:
    name: str
    kind: str
    access: Access
    idle_timeout: float | None
    min_replicas: int
    max_replicas: int
    hold_timeout: float = DEFAULT_HOLD_TIMEOUT
    hold_queue_size: int = DEFAULT_HOLD_QUEUE_SIZE

    @property
    def sleeps(self) -> bool:
        return self.idle_timeout is not None and self.min_replicas == 0


@dataclass(frozen=True, slots=True)
class Readiness:
    """How a replica proves it is ready: an HTTP GET that answers 2xx/3xx, or a TCP connect."""

    http_path: str | None = "/"
    tcp: bool = False
    timeout: float = 1.0  # per probe attempt


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    command: str  # template: {port}, {version}, {python}
    version: str
    environments: tuple[str, ...]
    readiness: Readiness = field(default_factory=Readiness)
    env: tuple[tuple[str, str], ...] = ()
    ignore_paths: tuple[str, ...] = ()
    ignore_user_agents: tuple[str, ...] = ()
    start_timeout: float = 120.0
    stop_grace: float = 10.0


@dataclass(frozen=True, slots=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_body_size: int = 64 * 1024 * 1024
    max_header_size: int = 8190
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-* are believed
    retry_window: float = 2.0  # how long after waking a refused connect is retried


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    host: str = "127.0.0.1"
    port: int = 8081


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    environment: Environment
    service: Service

    @property
    def key(self) -> tuple[str, str]:
        return (self.environment.name, self.service.name)

    @property
    def name(self) -> str:
        return f"{self.environment.name}/{self.service.name}"


@dataclass(frozen=True, slots=True)
class Config:
    path: str  # the file it was read from, for messages
    domain: str
    state_dir: str  # absolute
    base_dir: str  # the config file's directory; commands run here
    runtime: str
    proxy: ProxySettings
    controller: ControllerSettings
    environments: MappingProxyType[str, Environment]
    services: MappingProxyType[str, Service]

    def instances(self) -> list[InstanceSpec]:
        return [
            InstanceSpec(self.environments[env], svc)
            for svc in self.services.values()
            for env in svc.environments
        ]

    def host_of(self, environment: str, service: str) -> str:
        return instance_host(service, environment, self.domain)


def instance_host(service: str, environment: str, domain: str) -> str:
    return f"{service}.{environment}.{domain}".lower()


# --- the route table: what the controller publishes and every proxy applies ---


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
    # Monotonic-clock second at which the endpoints became ready (0 if never);
    # the proxy retries refused connects shortly after a wake.
    ready_since: float = 0.0

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
