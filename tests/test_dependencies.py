"""The dependency walks of `depends_on` (controller/dependencies.py): transitive, within one
environment, and safe on a cycle (Kubernetes annotations can make one; the config cannot)."""

from __future__ import annotations

from controller.dependencies import dependencies, dependents
from controller.model import Instance, Key
from controller.spec import KIND_DEFAULTS, Environment, InstanceSpec, Service


def instances(graph: dict[str, tuple[str, ...]], environment: str = "demo"
              ) -> dict[Key, Instance]:
    d = KIND_DEFAULTS["demo"]
    env = Environment(environment, "demo", d.access, d.idle_timeout, d.min_replicas,
                      d.max_replicas)
    found = {}
    for name, needs in graph.items():
        spec = InstanceSpec(env, Service(name, "", "1.0.0", (environment,), depends_on=needs))
        found[spec.key] = Instance(spec, f"{name}.{environment}.localhost", "1.0.0")
    return found


def names(found: list[Instance]) -> set[str]:
    return {inst.key[1] for inst in found}


def test_a_chain_is_walked_both_ways() -> None:
    chain = instances({"api": ("db",), "db": ("cache",), "cache": ()})
    assert names(dependencies(chain, ("demo", "api"))) == {"db", "cache"}
    assert names(dependents(chain, ("demo", "cache"))) == {"api", "db"}
    assert names(dependents(chain, ("demo", "api"))) == set()


def test_a_missing_dependency_is_skipped() -> None:
    found = instances({"api": ("db",)})  # db was removed by apply
    assert dependencies(found, ("demo", "api")) == []


def test_a_cycle_ends_and_keeps_nothing_awake() -> None:
    cycle = instances({"api": ("db",), "db": ("api",), "web": ("api",)})
    assert names(dependencies(cycle, ("demo", "api"))) == {"db"}
    # db and api depend on each other: neither keeps the other awake (else both never
    # sleep); web, outside the cycle, still keeps api (and through it db) awake.
    assert names(dependents(cycle, ("demo", "api"))) == {"web"}
    assert names(dependents(cycle, ("demo", "db"))) == {"web"}
