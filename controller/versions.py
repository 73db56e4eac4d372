"""Which version each instance runs, kept under state_dir so it survives restarts.

`versions.json`: {"<environment>/<service>": "<version>"}, written atomically
(a crash mid-write leaves the previous file, never half of one). An instance
with no entry runs its service's configured version, except in a project
environment (development, staging, production, prerelease), where a newly
placed service starts at the demo (public) version.
"""

from __future__ import annotations

import os

from .spec import InstanceSpec
from .statefile import read_json, write_json_atomic

PROJECT_KINDS = ("development", "staging", "production", "prerelease")


class VersionStore:
    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "versions.json")
        raw = read_json(self.path, {})
        self._versions: dict[str, str] = {
            str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}

    def get(self, environment: str, service: str) -> str | None:
        return self._versions.get(f"{environment}/{service}")

    def initial(self, spec: InstanceSpec, demo_environment: str | None) -> str:
        """The version an instance runs when it starts: stored, else by the rule above."""
        stored = self.get(*spec.key)
        if stored is not None:
            return stored
        if spec.environment.kind in PROJECT_KINDS and demo_environment is not None:
            public = self.get(demo_environment, spec.service.name)
            if public is not None:
                return public
        return spec.service.version

    def set(self, environment: str, service: str, version: str) -> None:
        versions = dict(self._versions)
        versions[f"{environment}/{service}"] = version
        write_json_atomic(self.path, versions)
        self._versions = versions  # only once it is on disk
