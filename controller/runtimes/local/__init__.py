"""The embedded runtime: replicas are local processes (runtime.py); production's colours
are processes too, recorded in state_dir/releases.json (colours.py)."""

from .colours import RELEASES_FILE, LocalColours, check_releases
from .runtime import LocalRuntime, Replica, die_with_parent

__all__ = [
    "RELEASES_FILE", "LocalColours", "LocalRuntime", "Replica", "check_releases",
    "die_with_parent",
]
