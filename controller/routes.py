"""The route table, derived from the instances each time the scaler publishes.

Nothing here is kept in step by hand: every publish builds the whole table
again from the model (an instance's state, replicas, version, keys, and for
production the preview colour), numbers it, and hands the same immutable
snapshot to every subscriber (the proxy in this process, the controller
API's route feed). A change is visible everywhere in one table version.

Besides one route per instance, a production instance has a second host,
`{service}.prerelease.{domain}`: its preview colour while there is one, else
the live colour. An instance of its own with that name wins.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType

from .model import READY, Instance, Key
from .spec import Route, RouteTable

__all__ = ["PRERELEASE", "RouteBoard", "derive_routes", "instance_route"]

PRERELEASE = "prerelease"  # the environment name of a production instance's second host

HostOf = Callable[[str, str], str]
KeyHashes = Callable[[str, str], tuple[bytes, ...]]


def instance_route(inst: Instance, key_hashes: KeyHashes) -> Route:
    """What the proxies need of one instance, as it is now."""
    env, svc = inst.spec.environment, inst.spec.service
    return Route(
        environment=env.name,
        service=svc.name,
        host=inst.host,
        access=env.access,
        state=inst.state,
        endpoints=tuple(r.endpoint for r in inst.live_replicas())
        if inst.state == READY else (),
        key_hashes=key_hashes(env.name, svc.name) if env.access == "api_key" else (),
        hold_timeout=env.hold_timeout,
        hold_queue_size=env.hold_queue_size,
        wake_strategy=env.wake_strategy,
        ignore_paths=svc.ignore_paths,
        ignore_user_agents=svc.ignore_user_agents,
        version=inst.version,
        failures=inst.failures,
        error=inst.error,
        backoff_until=inst.backoff_until,
    )


def _prerelease_route(inst: Instance, live: Route, host: str) -> Route:
    """The production instance's second host: the preview colour, else the live one."""
    preview = inst.release.preview() if inst.release is not None else None
    endpoints = tuple(r.endpoint for r in preview.replicas) if preview and preview.replicas \
        else None
    return dataclasses.replace(
        live, environment=PRERELEASE, host=host, key_hashes=(),
        endpoints=endpoints if endpoints is not None else live.endpoints,
        state=READY if endpoints is not None else live.state,
        version=preview.version if preview is not None else live.version,
    )


def derive_routes(instances: Iterable[Instance], host_of: HostOf, key_hashes: KeyHashes
                  ) -> tuple[list[Route], dict[Key, Key]]:
    """Every route, and each prerelease alias → the production instance it shows."""
    by_host: dict[str, Route] = {}
    by_key: dict[Key, Route] = {}
    aliases: dict[Key, Key] = {}
    production: list[tuple[Instance, Route]] = []
    for inst in instances:
        route = instance_route(inst, key_hashes)
        by_host[route.host] = by_key[route.key] = route
        if inst.spec.environment.kind == "production":
            production.append((inst, route))
    for inst, live in production:
        key = (PRERELEASE, inst.spec.service.name)
        host = host_of(*key)
        own = key in by_key and key not in aliases
        taken = by_host.get(host)
        if own or (taken is not None and taken.key != key):
            continue  # an instance of its own has that name: it wins
        route = _prerelease_route(inst, live, host)
        by_host[host] = by_key[key] = route
        aliases[key] = inst.key
    return list(by_key.values()), aliases


class RouteBoard:
    """The published table, its version, and who gets each new one."""

    def __init__(self, host_of: HostOf, key_hashes: KeyHashes) -> None:
        self._host_of = host_of
        self._key_hashes = key_hashes
        self._subscribers: list[Callable[[RouteTable], None]] = []
        self.table = RouteTable.build(0, [])
        self.aliases: Mapping[Key, Key] = MappingProxyType({})

    def subscribe(self, apply: Callable[[RouteTable], None]) -> None:
        """`apply` gets the table now and every new one from here on."""
        self._subscribers.append(apply)
        apply(self.table)

    def target(self, key: Key) -> Key:
        """The instance a route belongs to (a prerelease route: its production instance)."""
        return self.aliases.get(key, key)

    def publish(self, instances: Iterable[Instance]) -> None:
        """A new table version from the instances as they are now, to every subscriber."""
        routes, aliases = derive_routes(instances, self._host_of, self._key_hashes)
        # A fresh snapshot each time: the published one never changes under a reader.
        self.table = RouteTable.build(self.table.version + 1, routes)
        self.aliases = MappingProxyType(aliases)
        for apply in self._subscribers:
            apply(self.table)
