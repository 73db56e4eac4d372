"""What an ephemeral environment runs, from its record and the config (pure functions).

An ephemeral environment (`wakegate env create NAME --from ENV`) runs every
service its source environment ran, each at the version recorded when it was
made. Its own settings are the `ephemeral` kind's (it sleeps when idle, at
most one replica) and the config's `ephemeral:` section; how requests are held
and drained (hold_timeout, hold_queue_size, wake_strategy, crash_backoff,
scale_down_delay) it takes from its source, so that a preview behaves like
the environment it previews. Both runtimes build its environment here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from .model import EphemeralRecord
from .names import is_environment_name
from .spec import (
    EPHEMERAL,
    KIND_DEFAULTS,
    KINDS,
    Config,
    Environment,
    EphemeralSettings,
    InstanceSpec,
)

__all__ = ["config_clashes", "ephemeral_environment", "ephemeral_name_problem", "ephemeral_specs"]


def ephemeral_name_problem(name: object) -> str | None:
    """Why an ephemeral environment may not have this name, or None. The same rule for
    `env create`, ephemeral.json and an ephemeral namespace found on Kubernetes."""
    if not is_environment_name(name):
        return "is not a valid environment name: 1 to 24 letters, digits and dashes, " \
            "starting with a letter"
    if name.endswith("-"):
        # Its hosts' labels (RFC 1123) and a namespace's label values end alphanumeric.
        return "ends with a dash; an ephemeral environment's name must end with a letter or digit"
    if name.lower() in KINDS:
        return "is reserved: it names a kind of environment; pick another name, e.g. pr-42"
    return None


def ephemeral_environment(record: EphemeralRecord, source: Environment | None,
                          settings: EphemeralSettings) -> Environment:
    """The environment of an ephemeral record (`source`: its source environment now, None
    when that is gone: the defaults then)."""
    defaults = KIND_DEFAULTS[EPHEMERAL]
    env = Environment(
        name=record.name, kind=EPHEMERAL, access=record.access,
        idle_timeout=settings.idle_timeout, min_replicas=defaults.min_replicas,
        max_replicas=defaults.max_replicas,
    )
    if source is None:
        return env
    return dataclasses.replace(
        env, hold_timeout=source.hold_timeout, hold_queue_size=source.hold_queue_size,
        wake_strategy=source.wake_strategy, crash_backoff=source.crash_backoff,
        scale_down_delay=source.scale_down_delay,
    )


def ephemeral_specs(config: Config, records: list[EphemeralRecord]) -> list[InstanceSpec]:
    """The instances of these ephemeral environments, with the config's services (a service
    no longer in the config is left out)."""
    specs: list[InstanceSpec] = []
    for record in records:
        env = ephemeral_environment(record, config.environments.get(record.source),
                                    config.ephemeral)
        for name, version in record.versions:
            service = config.services.get(name)
            if service is not None:
                specs.append(InstanceSpec(env, dataclasses.replace(
                    service, version=version, environments=(record.name,))))
    return specs


def config_clashes(config: Config, names: Iterable[str]) -> list[tuple[str, str]]:
    """(ephemeral name, the config's environment) for each of `names` that an environment
    of the config also has, ignoring case (their hosts would be the same): one name, one
    environment. The start and apply refuse a config with any."""
    own = {name.lower(): name for name in config.environments}
    return sorted((name, own[name.lower()]) for name in names if name.lower() in own)
