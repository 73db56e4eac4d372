"""The environment/service model: kinds, environments, services, settings, the config."""

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

# `ephemeral`: made and removed by `wakegate env create/delete` (ephemeral.py), never in
# the config; it sleeps when idle like demo and expires at the end of its TTL.
KINDS = ("private", "demo", "development", "staging", "production", "prerelease", "ephemeral")
EPHEMERAL = "ephemeral"


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
    EPHEMERAL: KindDefaults("public", 15 * 60.0, 0, 1),
}
# An environment's prefix (object names `{prefix}-{service}` on Kubernetes, image tags
# `{version}-{prefix}`) when the config sets none; other kinds have none.
DEFAULT_PREFIXES = {"development": "dev", "staging": "stg", "production": "prod"}


def image_tag(version: str, prefix: str) -> str:
    """The image tag a version runs as in an environment with this prefix: `1.0.0-prod`."""
    return f"{version}-{prefix}" if prefix else version

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
    prefix: str = ""  # 1-8 lowercase letters and digits, or none

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
    # Services of the same environment woken with this one, and kept awake while it is.
    depends_on: tuple[str, ...] = ()


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
class EphemeralSettings:
    """The config's `ephemeral:` section: what `wakegate env create` makes."""

    max_environments: int = 20  # the config's max_ephemeral_environments
    idle_timeout: float = 15 * 60.0
    ttl: float = 24 * 3600.0  # when `env create` names none
    max_ttl: float = 30 * 24 * 3600.0  # the longest TTL create or extend may set


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
    ephemeral: EphemeralSettings = field(default_factory=EphemeralSettings)
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
