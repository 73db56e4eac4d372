"""The environment/service model and the route table.

This is the only controller module the proxy imports: it holds plain, frozen
data and no I/O, so the data plane never depends on the control plane's code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal

Access = Literal["public", "api_key"]

# Instance states as the proxy sees them in the route table.
SLEEPING = "sleeping"  # no replica; a request wakes it
STARTING = "starting"  # activation under way
READY = "ready"  # endpoints serve
STOPPING = "stopping"  # going to sleep; a request is held and wakes it again
FAILED = "failed"  # the last activation failed; held requests get 503 at once

# Every API key wakegate makes starts with this, so that a proxy knows a key
# when it sees one, on any route, and never forwards it.
API_KEY_PREFIX = "wg_"


KEY_ID = re.compile(r"[0-9a-f]{12}")  # what key_id() gives


def key_id(digest: bytes) -> str:
    """A key's id, shown by `keys list` and taken by `keys revoke`: the first 12 hex digits
    of its SHA-256 digest (never the key, never the whole digest)."""
    return digest[:6].hex()

KINDS = ("private", "demo", "development", "staging", "production", "prerelease")


@dataclass(frozen=True, slots=True)
class KindDefaults:
    access: Access
    idle_timeout: float | None  # seconds; None: never sleeps
    min_replicas: int
    max_replicas: int


# The first table of docs/contract.md.
KIND_DEFAULTS: dict[str, KindDefaults] = {
    "private": KindDefaults("api_key", 15 * 60.0, 0, 1),
    "demo": KindDefaults("public", 15 * 60.0, 0, 1),
    "development": KindDefaults("public", 30 * 60.0, 0, 2),
    "staging": KindDefaults("public", None, 1, 2),
    "production": KindDefaults("public", None, 2, 10),
    "prerelease": KindDefaults("public", None, 2, 10),
}

@dataclass(frozen=True, slots=True)
class Autoscale:
    """Scaling by load between min_replicas and max_replicas, the way Knative's KPA does it
    (its defaults): desired = ceil(concurrency averaged over `window` / (target_concurrency
    x target_utilization)); when the `panic_window` average asks for `panic_threshold` x
    the current capacity, scale up on it and do not scale down until the panic has been
    over for a whole `window`; scale down one replica at a time, at most every
    `scale_down_delay`. Set per environment (`autoscale:`), overridden per service."""

    target_concurrency: float = 100.0  # requests in flight one replica is meant to take
    target_utilization: float = 0.7  # of target_concurrency, the headroom kept for bursts
    window: float = 60.0  # seconds: the stable window
    panic_window: float = 6.0  # seconds
    panic_threshold: float = 2.0  # x current capacity
    scale_down_delay: float = 30.0  # seconds between two steps down


@dataclass(frozen=True, slots=True)
class CrashBackoff:
    """After `after` failed activations in a row, no start for `first` seconds, doubling up
    to `max` (like Kubernetes' CrashLoopBackOff); a successful start, a new version or an
    apply ends it. Requests meanwhile get 503 with the time left in Retry-After."""

    after: int = 3
    first: float = 1.0
    max: float = 300.0

    def delay(self, failures_in_a_row: int) -> float:
        """Seconds of back-off after that many failures in a row (0: none yet)."""
        if failures_in_a_row < self.after:
            return 0.0
        return float(min(self.first * 2 ** min(failures_in_a_row - self.after, 40), self.max))


DEFAULT_HOLD_TIMEOUT = 60.0
DEFAULT_HOLD_QUEUE_SIZE = 1000
DEFAULT_SCALE_DOWN_DELAY = 30.0
# What a browser gets from a sleeping instance: held like any client, or a
# "waking up" page that reloads itself until the instance is ready.
WAKE_STRATEGIES = ("hold", "page")


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
    # Blue/green (production): how long the old colour keeps running after a
    # promote, for requests and WebSockets in flight on it and a quick rollback.
    scale_down_delay: float = DEFAULT_SCALE_DOWN_DELAY
    wake_strategy: str = "hold"
    crash_backoff: CrashBackoff = field(default_factory=CrashBackoff)
    autoscale: Autoscale = field(default_factory=Autoscale)

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
    # `autoscale:` keys set on the service, over its environment's (field name, value).
    autoscale_overrides: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ProxySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    connect_timeout: float = 5.0
    read_timeout: float = 60.0
    max_body_size: int = 64 * 1024 * 1024
    max_header_size: int = 8190
    trusted_proxies: tuple[str, ...] = ()  # CIDRs whose X-Forwarded-* are believed
    # Client connections (nginx's client_header_timeout and keepalive_timeout):
    # a request head not whole by then is closed (408 if nothing was answered on
    # the connection yet); a keep-alive connection idle that long is closed.
    header_timeout: float = 60.0
    keepalive_timeout: float = 75.0


@dataclass(frozen=True, slots=True)
class ControllerSettings:
    host: str = "127.0.0.1"
    port: int = 8081
    # The controller API answers to IP addresses, localhost and these names only
    # (DNS rebinding), and refuses calls from web pages but of these origins.
    hostnames: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KubernetesSettings:
    """How the kubernetes runtime reaches the cluster and elects its leader."""

    kubeconfig: str | None = None  # None: in-cluster config, else ~/.kube/config
    lease_namespace: str = "wakegate-system"
    lease_name: str = "wakegate-controller"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    # Last activity is written to each Deployment at most this often.
    activity_persist_interval: float = 5.0


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

    @property
    def autoscale(self) -> Autoscale:
        """The environment's autoscale settings with the service's overrides."""
        overrides = self.service.autoscale_overrides
        return replace(self.environment.autoscale, **dict(overrides)) if overrides \
            else self.environment.autoscale


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
    kubernetes: KubernetesSettings = field(default_factory=KubernetesSettings)
    # `file: path: warning: ...` lines: valid, but probably not what was meant.
    warnings: tuple[str, ...] = ()

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


# --- the route table on the wire (`wakegate controller` → `wakegate proxy`) ---
#
# JSON-ready dicts, decoded strictly: a proxy must never apply a table it only
# half understood. `backoff_until` is a reading of the sender's monotonic clock;
# the message that carries the routes also carries the sender's `now`, and the
# receiver shifts it into its own clock (clocks differ between processes).


class WireError(ValueError):
    """A route table on the wire that is not what this version of wakegate sends."""


def route_to_wire(route: Route) -> dict[str, object]:
    return {
        "environment": route.environment,
        "service": route.service,
        "host": route.host,
        "access": route.access,
        "state": route.state,
        "endpoints": list(route.endpoints),
        "key_hashes": [digest.hex() for digest in route.key_hashes],
        "hold_timeout": route.hold_timeout,
        "hold_queue_size": route.hold_queue_size,
        "ignore_paths": list(route.ignore_paths),
        "ignore_user_agents": list(route.ignore_user_agents),
        "version": route.version,
        "failures": route.failures,
        "error": route.error,
        "wake_strategy": route.wake_strategy,
        "backoff_until": route.backoff_until,
    }


def routes_to_wire(table: RouteTable) -> list[dict[str, object]]:
    return [route_to_wire(route) for route in table.by_key.values()]


def route_from_wire(data: object, clock_shift: float = 0.0, where: str = "route") -> Route:
    """A Route from `route_to_wire`'s dict; `clock_shift` = receiver's now - sender's now."""
    if not isinstance(data, dict):
        raise WireError(f"{where}: must be an object")

    def get(name: str, kinds: type | tuple[type, ...], optional: bool = False) -> object:
        value = data.get(name)
        if value is None and optional:
            return None
        # bool is an int to Python, never to the sender.
        if isinstance(value, bool) or not isinstance(value, kinds):
            raise WireError(f"{where}.{name}: missing or of the wrong type")
        return value

    def strings(name: str) -> tuple[str, ...]:
        value = get(name, list)
        assert isinstance(value, list)
        if not all(isinstance(item, str) for item in value):
            raise WireError(f"{where}.{name}: must be a list of strings")
        return tuple(value)

    access = get("access", str)
    if access not in ("public", "api_key"):
        raise WireError(f"{where}.access: {access!r} is neither public nor api_key")
    state = get("state", str)
    if state not in (SLEEPING, STARTING, READY, STOPPING, FAILED):
        raise WireError(f"{where}.state: unknown state {state!r}")
    try:
        key_hashes = tuple(bytes.fromhex(h) for h in strings("key_hashes"))
    except ValueError:
        raise WireError(f"{where}.key_hashes: must be hexadecimal SHA-256 digests") from None
    if any(len(h) != 32 for h in key_hashes):
        raise WireError(f"{where}.key_hashes: must be SHA-256 digests (32 bytes)")
    backoff_until = float(get("backoff_until", (int, float)))  # type: ignore[arg-type]
    wake_strategy = get("wake_strategy", str)
    if wake_strategy not in WAKE_STRATEGIES:
        raise WireError(f"{where}.wake_strategy: unknown strategy {wake_strategy!r}")
    return Route(
        environment=str(get("environment", str)),
        service=str(get("service", str)),
        host=str(get("host", str)).lower(),
        access="api_key" if access == "api_key" else "public",
        state=str(state),
        endpoints=strings("endpoints"),
        key_hashes=key_hashes,
        hold_timeout=float(get("hold_timeout", (int, float))),  # type: ignore[arg-type]
        hold_queue_size=int(get("hold_queue_size", int)),  # type: ignore[call-overload]
        ignore_paths=strings("ignore_paths"),
        ignore_user_agents=strings("ignore_user_agents"),
        version=str(get("version", str)),
        failures=int(get("failures", int)),  # type: ignore[call-overload]
        error=None if (error := get("error", str, optional=True)) is None else str(error),
        wake_strategy=str(wake_strategy),
        backoff_until=backoff_until + clock_shift if backoff_until else 0.0,
    )


def table_from_wire(version: int, routes: object, clock_shift: float = 0.0) -> RouteTable:
    """A RouteTable numbered `version` from `routes_to_wire`'s list; WireError if malformed."""
    if not isinstance(routes, list):
        raise WireError("routes: must be a list")
    return RouteTable.build(
        version,
        [route_from_wire(r, clock_shift, f"routes[{i}]") for i, r in enumerate(routes)],
    )
