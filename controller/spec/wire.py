"""The route table on the wire (`wakegate controller` -> `wakegate proxy`)."""

from __future__ import annotations

from .model import FAILED, READY, SLEEPING, STARTING, STOPPING, WAKE_STRATEGIES
from .routes import Route, RouteTable

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
