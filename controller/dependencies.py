"""Services that wake together: an instance's dependencies and dependents in its environment.

A service's `depends_on` names services of the same environment, which are
woken with it (scaler.py) and kept awake while it is (sleep.py). Both walks
go through the instances as they are now, transitively (api -> db -> cache),
within one environment; a service named but without an instance there (one
that apply removed) is skipped, and the walk goes no further through it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from .model import Instance, Key

__all__ = ["dependencies", "dependents"]


def dependencies(instances: Mapping[Key, Instance], key: Key) -> list[Instance]:
    """The instances `key` depends on, directly or not, in its environment."""
    environment = key[0]

    def depends_on(inst: Instance) -> Iterable[Instance]:
        for name in inst.spec.service.depends_on:
            found = instances.get((environment, name))
            if found is not None:
                yield found

    return _reachable(instances, key, depends_on)


def dependents(instances: Mapping[Key, Instance], key: Key) -> list[Instance]:
    """The instances of `key`'s environment that depend on it, directly or not."""
    environment = key[0]
    if not any(inst.spec.service.depends_on for inst in instances.values()):
        return []  # the common case, checked by the sleeper for every instance

    def depended_on_by(inst: Instance) -> Iterable[Instance]:
        name = inst.key[1]
        for other in instances.values():
            if other.key[0] == environment and name in other.spec.service.depends_on:
                yield other

    # A dependent that is also a dependency (a cycle, which only Kubernetes annotations can
    # make) keeps nothing awake: else the two would keep each other awake for ever.
    cycle = {inst.key for inst in dependencies(instances, key)}
    return [inst for inst in _reachable(instances, key, depended_on_by)
            if inst.key not in cycle]


def _reachable(instances: Mapping[Key, Instance], key: Key,
               neighbours: Callable[[Instance], Iterable[Instance]]) -> list[Instance]:
    """Every instance reachable from `key` by `neighbours`, each once, `key`'s own left out
    (the config allows no cycle, but a walk must end whatever it is given)."""
    start = instances.get(key)
    if start is None:
        return []
    seen = {key}
    found: list[Instance] = []
    todo = [start]
    while todo:
        for inst in neighbours(todo.pop()):
            if inst.key not in seen:
                seen.add(inst.key)
                found.append(inst)
                todo.append(inst)
    return found
