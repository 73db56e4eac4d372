"""What `env create` and `env extend` ask for, checked before anything is made.

Every refusal is an `EnvironmentRefused` with the HTTP status and error code
of the API's contract (docs/controller-api.md) and a sentence a person can act
on; nothing here changes any state, so a refused create leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config import parse_version
from .ephemeral_specs import ephemeral_name_problem
from .model import EphemeralRecord
from .names import MAX_HOST_LENGTH, is_environment_name
from .scaler import Scaler
from .spec import EPHEMERAL, EphemeralSettings
from .units import parse_duration

__all__ = ["ACCESS", "EnvironmentRefused", "check_create", "check_name", "check_ttl",
           "show_duration", "show_value"]

ACCESS = ("public", "api_key")
MIN_TTL = 1.0  # seconds: expiry is kept to the second


class EnvironmentRefused(Exception):
    """A request about environments that is refused: `status`, `code` and `message` are the
    API's answer (nothing was changed)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def show_duration(seconds: float) -> str:
    """A duration the way `--ttl` takes it: "720h", "90m", "1.5s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{int(seconds // 60)}m"
    return f"{seconds:g}s"


def check_ttl(value: object, settings: EphemeralSettings) -> float:
    """A TTL in seconds: a duration > 0 and <= ephemeral.max_ttl, else 400 bad_ttl."""
    try:
        ttl = parse_duration(value)
    except ValueError as exc:
        raise EnvironmentRefused(400, "bad_ttl", f"ttl: {exc}") from None
    if ttl < MIN_TTL:
        raise EnvironmentRefused(400, "bad_ttl", f"ttl: must be at least 1s, got "
                                 f"{show_duration(ttl)}: give how long the environment lives, "
                                 "e.g. 2h")
    if ttl > settings.max_ttl:
        raise EnvironmentRefused(
            400, "bad_ttl", f"ttl: {show_duration(ttl)} is longer than the limit, "
            f"{show_duration(settings.max_ttl)} (ephemeral.max_ttl of the config)")
    return ttl


def config_environments(scaler: Scaler) -> dict[str, tuple[str, str]]:
    """The environments that are not ephemeral: name → (kind, access); the config's, and
    (Kubernetes) those the cluster holds."""
    found = {name: (env.kind, env.access) for name, env in scaler.config.environments.items()}
    for inst in scaler.instances.values():
        env = inst.spec.environment
        if env.kind != EPHEMERAL:
            found.setdefault(env.name, (env.kind, env.access))
    return found


def check_name(scaler: Scaler, name: object) -> str:
    """A name a new environment may take, else 400 bad_name or 409 environment_exists."""
    problem = ephemeral_name_problem(name)
    if problem is not None and not is_environment_name(name):
        raise EnvironmentRefused(400, "bad_name", f"name: {show_value(name)} {problem}")
    assert isinstance(name, str)
    existing = [*config_environments(scaler), *scaler.removing,
                *(record.name for record in scaler.runtime.ephemeral.records())]
    # Hosts ignore case: Pr-1 and pr-1 would have the same URLs.
    same = next((other for other in existing if other.lower() == name.lower()), None)
    if same is not None:
        said = (f"The environment {same!r} is being deleted; try again in a moment."
                if same in scaler.removing else f"There is already an environment {same!r}.")
        raise EnvironmentRefused(409, "environment_exists", said)
    if problem is not None:
        raise EnvironmentRefused(400, "bad_name", f"name: {name!r} {problem}")
    return name


def show_value(value: object) -> str:
    """A value from a request, as an answer says it back: quoted, never longer than a line."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_create(scaler: Scaler, body: Mapping[str, Any], now: float
                 ) -> tuple[EphemeralRecord, list[str]]:
    """The record a `POST /v1/environments` body asks for, and the source's services."""
    settings = scaler.config.ephemeral
    name = check_name(scaler, body.get("name"))
    source = body.get("from")
    environments = config_environments(scaler)
    sources = {env: kind for env, (kind, _) in environments.items()}
    services = sorted(svc for env, svc in scaler.instances if env == source)
    if not isinstance(source, str) or source not in sources or not services:
        known = ", ".join(sorted({env for env, _ in scaler.instances if env in sources}))
        raise EnvironmentRefused(404, "unknown_environment",
                                 f"from: there is no environment {show_value(source)} to copy; "
                                 f"known: {known or 'none'}.")
    # A copy is as closed as what it copies unless asked otherwise: a copy of a private
    # environment must never be public by default.
    access = body.get("access", environments[source][1])
    if access not in ACCESS:
        raise EnvironmentRefused(400, "bad_request", f"access: must be \"public\" or "
                                 f"\"api_key\", got {show_value(access)}")
    ttl = check_ttl(body.get("ttl", settings.ttl), settings)
    versions = {svc: scaler.instances[(source, svc)].version for svc in services}
    asked = body.get("versions", {})
    if not isinstance(asked, dict):
        raise EnvironmentRefused(400, "bad_request", "versions: must be an object mapping "
                                 'service to version, e.g. {"api": "1.2.0"}')
    for service, version in asked.items():
        if service not in versions:
            raise EnvironmentRefused(400, "unknown_service",
                                     f"versions: {source} runs no service {show_value(service)}; "
                                     f"it runs {', '.join(services)}.")
        try:
            versions[service] = parse_version(version)
        except ValueError as exc:
            raise EnvironmentRefused(400, "bad_version", f"versions.{service}: {exc}") from None
    longest = max(len(scaler.config.host_of(name, svc)) for svc in services)
    if longest > MAX_HOST_LENGTH:
        raise EnvironmentRefused(400, "bad_name", f"name: {name!r} makes host names of "
                                 f"{longest} characters, more than DNS allows "
                                 f"({MAX_HOST_LENGTH}); pick a shorter name")
    count = len(scaler.runtime.ephemeral.records())
    if count >= settings.max_environments:
        raise EnvironmentRefused(
            409, "too_many_environments",
            f"{count} ephemeral environment{'' if count == 1 else 's'} exist, and the limit "
            f"is {settings.max_environments} (max_ephemeral_environments of the config): "
            "delete one (`wakegate env delete NAME`) or wait for one to expire.")
    record = EphemeralRecord(name=name, source=source, access=access, created=now,
                             expires=now + ttl, versions=tuple(sorted(versions.items())))
    return record, services
