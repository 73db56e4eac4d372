"""Two wakegates, the fast path on and off, to run one test against both proxy paths; and
the byte-level upstreams of tests/upstreams/ as services of their configs.

Used by the tests that hold the llhttp fast path and the aiohttp path to one behaviour
(test_fastpath, test_fastpath_attacks, test_smuggling, test_request_targets,
test_client_timeouts, test_differential); they talk to both with tests/raw_client.py.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from .conftest import Wakegate, stop_all

PATHS = ("fast", "aiohttp")  # WAKEGATE_FAST_PATH=1 and =0
UPSTREAMS = Path(__file__).resolve().parent / "upstreams"
RAW = UPSTREAMS / "raw_http.py"


def upstream_service(script: Path, *environments: str) -> dict[str, Any]:
    """A script of tests/upstreams (run as `script --port PORT`) as a service of a test
    config: always answering on TCP, stopped quickly."""
    return {
        "command": f"{{python}} {script} --port {{port}}",
        "readiness": {"tcp": True},
        "environments": list(environments),
        "stop_grace": "1s",
    }


def raw_service(*environments: str) -> dict[str, Any]:
    """tests/upstreams/raw_http.py as a service of a test config."""
    return upstream_service(RAW, *environments)


@contextlib.contextmanager
def both_paths(tmp: Path, config: dict[str, Any],
               *ready: tuple[str, str]) -> Iterator[dict[str, Wakegate]]:
    """Two `wakegate up` with `config`, the fast path on ("fast") and off ("aiohttp"),
    started together and waited for until every (environment, service) of `ready` is
    ready; stopped by pid at the end (none left behind)."""
    wgs: dict[str, Wakegate] = {
        name: PathWakegate(tmp, copy.deepcopy(config), name, fast_path=name == "fast")
        for name in PATHS
    }
    try:
        with ThreadPoolExecutor(len(wgs)) as pool:
            list(pool.map(lambda wg: wg.start(), wgs.values()))
        for wg in wgs.values():
            for environment, service in ready:
                wg.wait_state(environment, service, "ready", timeout=20.0)
        yield wgs
    finally:
        stop_all(list(wgs.values()))


class PathWakegate(Wakegate):
    """A wakegate with the fast path on or off (WAKEGATE_FAST_PATH)."""

    def __init__(self, tmp: Path, config: dict[str, Any], name: str, fast_path: bool) -> None:
        super().__init__(tmp, config, name)
        self.fast_path = fast_path

    def env(self) -> dict[str, str]:
        env = super().env()
        env["WAKEGATE_FAST_PATH"] = "1" if self.fast_path else "0"
        return env
