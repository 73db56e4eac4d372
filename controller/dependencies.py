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

__all__ = ["dependencies", "dependents", "dependents_index"]


def dependencies(instances: Mapping[Key, Instance], key: Key) -> list[Instance]:
    """The instances `key` depends on, directly or not, in its environment."""
    environment = key[0]

    def depends_on(inst: Instance) -> Iterable[Instance]:
        for name in inst.spec.service.depends_on:
            found = instances.get((environment, name))
            if found is not None:
                yield found

    return _reachable(instances, key, depends_on)


def dependents_index(instances: Mapping[Key, Instance]) -> dict[Key, list[Instance]]:
    """Each instance's direct dependents (in its environment), built in one pass: the sleeper
    builds it once per look at every instance, not once per instance. Empty when no service
    has a depends_on (the common case)."""
    index: dict[Key, list[Instance]] = {}
    for inst in instances.values():
        for name in inst.spec.service.depends_on:
            index.setdefault((inst.key[0], name), []).append(inst)
    return index


def dependents(instances: Mapping[Key, Instance], key: Key,
               index: Mapping[Key, list[Instance]] | None = None) -> list[Instance]:
    """The instances of `key`'s environment that depend on it, directly or not (`index`:
    dependents_index(instances), when the caller has it)."""
    if index is None:
        index = dependents_index(instances)
    if not index:
        return []
    found = _reachable(instances, key, lambda inst: index.get(inst.key, ()))
    if not found:
        return []
    # A dependent that is also a dependency (a cycle, which only Kubernetes annotations can
    # make) keeps nothing awake: else the two would keep each other awake for ever.
    cycle = {inst.key for inst in dependencies(instances, key)}
    return [inst for inst in found if inst.key not in cycle]


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
