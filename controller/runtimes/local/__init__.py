"""The embedded runtime: replicas are local processes (runtime.py); production's colours
are processes too, recorded in state_dir/releases.json (colours.py); ephemeral
environments are recorded in state_dir/ephemeral.json (ephemeral.py)."""

from .colours import RELEASES_FILE, LocalColours, check_releases
from .ephemeral import EPHEMERAL_FILE, LocalEphemeral, check_ephemeral
from .runtime import LocalRuntime, Replica, die_with_parent

__all__ = [
    "EPHEMERAL_FILE", "RELEASES_FILE", "LocalColours", "LocalEphemeral", "LocalRuntime",
    "Replica", "check_ephemeral", "check_releases", "die_with_parent",
]
