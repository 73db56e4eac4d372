"""Which version each instance runs, kept under state_dir so it survives restarts.

`versions.json`: {"<environment>/<service>": "<version>"}, written atomically
(a crash mid-write leaves the previous file, never half of one). An instance
with no entry runs its service's configured version, except in a project
environment (development, staging, production, prerelease), where a newly
placed service starts at the demo (public) version.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .config import parse_version
from .spec import Environment, InstanceSpec
from .statefile import Problems, instances, read_state, write_json_atomic

PROJECT_KINDS = ("development", "staging", "production", "prerelease")
VERSIONS_FILE = "versions.json"  # under state_dir


def check_versions(problems: Problems, data: Any) -> None:
    """versions.json's schema: each version one that `deploy` would take."""
    for name, version in instances(problems, data, "a version"):
        try:
            parse_version(version)
        except ValueError as exc:
            problems.add(name, str(exc))


class VersionStore:
    """A file that is not valid raises StateFileError here and is never written."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, VERSIONS_FILE)
        self._versions: dict[str, str] = read_state(self.path, check_versions, {})

    def get(self, environment: str, service: str) -> str | None:
        return self._versions.get(f"{environment}/{service}")

    def initial(self, spec: InstanceSpec, environments: Mapping[str, Environment]) -> str:
        """The version an instance runs when it starts: stored, else by the rule above
        (`environments`: the config's, to find the service's demo environment)."""
        stored = self.get(*spec.key)
        if stored is not None:
            return stored
        if spec.environment.kind in PROJECT_KINDS:
            demo = next((name for name in spec.service.environments
                         if (env := environments.get(name)) is not None and env.kind == "demo"),
                        None)
            public = self.get(demo, spec.service.name) if demo is not None else None
            if public is not None:
                return public
        return spec.service.version

    def set(self, environment: str, service: str, version: str) -> None:
        versions = dict(self._versions)
        versions[f"{environment}/{service}"] = version
        write_json_atomic(self.path, versions)
        self._versions = versions  # only once it is on disk

    def forget_environment(self, environment: str) -> None:
        """The environment's entries are gone (an ephemeral environment was deleted: a new
        one of the same name starts from its own record)."""
        prefix = f"{environment}/"
        if any(name.startswith(prefix) for name in self._versions):
            versions = {n: v for n, v in self._versions.items() if not n.startswith(prefix)}
            write_json_atomic(self.path, versions)
            self._versions = versions  # only once it is on disk
