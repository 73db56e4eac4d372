"""The shared model: environments, services and settings (model.py), the route table
(routes.py) and its form on the wire (wire.py).

This is the only part of the controller the proxy imports: plain, frozen data and no
I/O, so the data plane never depends on the control plane's code.
"""

from .model import (
    API_KEY_PREFIX,
    DEFAULT_HOLD_QUEUE_SIZE,
    DEFAULT_HOLD_TIMEOUT,
    DEFAULT_PREFIXES,
    DEFAULT_SCALE_DOWN_DELAY,
    EPHEMERAL,
    FAILED,
    KEY_ID,
    KIND_DEFAULTS,
    KINDS,
    READY,
    SLEEPING,
    STARTING,
    STOPPING,
    WAKE_STRATEGIES,
    Access,
    Autoscale,
    Config,
    ControllerSettings,
    CrashBackoff,
    Environment,
    EphemeralSettings,
    InstanceSpec,
    KindDefaults,
    KubernetesSettings,
    ProxySettings,
    Readiness,
    Service,
    image_tag,
    instance_host,
    key_id,
)
from .routes import EMPTY_TABLE, Route, RouteTable
from .wire import WireError, route_from_wire, route_to_wire, routes_to_wire, table_from_wire

__all__ = [
    "API_KEY_PREFIX", "DEFAULT_HOLD_QUEUE_SIZE", "DEFAULT_HOLD_TIMEOUT", "DEFAULT_PREFIXES",
    "DEFAULT_SCALE_DOWN_DELAY", "EMPTY_TABLE", "EPHEMERAL", "FAILED", "KEY_ID",
    "KINDS", "KIND_DEFAULTS", "READY", "SLEEPING", "STARTING", "STOPPING", "WAKE_STRATEGIES",
    "Access", "Autoscale", "Config", "ControllerSettings", "CrashBackoff", "Environment",
    "EphemeralSettings", "InstanceSpec", "KindDefaults", "KubernetesSettings",
    "ProxySettings", "Readiness",
    "Route", "RouteTable", "Service", "WireError", "image_tag", "instance_host", "key_id",
    "route_from_wire", "route_to_wire", "routes_to_wire", "table_from_wire",
]
