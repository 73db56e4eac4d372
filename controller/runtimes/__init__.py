"""The runtimes, and the one place that picks one: `build_runtime`, for the composition root.

The scaler never imports a runtime: it is given one (runtimes/base.py names
what it may ask of it). The Kubernetes runtime is imported only when the
config asks for it, so the local runtime never loads the Kubernetes client.
"""

from __future__ import annotations

from ..spec import Config
from .base import Runtime


def build_runtime(config: Config) -> Runtime:
    """The runtime `config.runtime` names; it reads what it keeps under state_dir (keys,
    releases) here, so a state file that is not valid raises StateFileError."""
    if config.runtime == "kubernetes":
        from .kubernetes import KubernetesRuntime

        return KubernetesRuntime(config)
    from .local import LocalRuntime

    return LocalRuntime(config)
