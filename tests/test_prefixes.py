"""Environment prefixes on the local runtime: exported to each process as WAKEGATE_PREFIX,
shown with the image tag (`1.0.0-dev`) by `wakegate status` and GET /v1/status."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import get_once
from .conftest import Wakegate

Start = Callable[..., Wakegate]
ENVIRONMENT_UPSTREAM = Path(__file__).resolve().parent / "upstreams" / "environment.py"
# environment -> (its settings, the prefix it has)
ENVIRONMENTS: dict[str, tuple[dict[str, Any], str]] = {
    "demo": ({}, ""),  # no prefix by default
    "development": ({"idle_timeout": "1h"}, "dev"),  # the kind's default
    "qa": ({"kind": "demo", "prefix": "qa1"}, "qa1"),  # set
    "dev2": ({"kind": "development", "prefix": ""}, ""),  # removed
}


async def test_each_process_sees_its_prefix_and_status_shows_the_tag(wakegate: Start) -> None:
    wg = wakegate({
        "environments": {name: settings for name, (settings, _) in ENVIRONMENTS.items()},
        "services": {"api": {
            "command": f"{sys.executable} {ENVIRONMENT_UPSTREAM} --port {{port}}",
            "version": "1.0.0", "environments": list(ENVIRONMENTS), "stop_grace": "2s",
        }},
    })
    answers = await asyncio.gather(*(get_once(wg, "api", name) for name in ENVIRONMENTS))
    for name, answer in zip(ENVIRONMENTS, answers, strict=True):
        assert answer.status == 200, answer
        assert answer.body["WAKEGATE_ENVIRONMENT"] == name, answer.body
        assert answer.body["WAKEGATE_PREFIX"] == ENVIRONMENTS[name][1], (name, answer.body)

    rows = {row["environment"]: row for row in
            json.loads(wg.cli("status", "--json", check=True).stdout)}
    for name, (_, prefix) in ENVIRONMENTS.items():
        tag = f"1.0.0-{prefix}" if prefix else "1.0.0"
        assert (rows[name]["version"], rows[name]["prefix"], rows[name]["tag"]) == \
            ("1.0.0", prefix, tag), rows[name]

    table = wg.cli("status", check=True).stdout.splitlines()
    header = table[0].split()
    assert header[:7] == ["ENVIRONMENT", "SERVICE", "STATE", "REPLICAS", "VERSION", "PREFIX",
                          "TAG"], table[0]
    shown = {line.split()[0]: line.split()[4:7] for line in table[1:]}
    assert shown == {"demo": ["1.0.0", "-", "1.0.0"], "development": ["1.0.0", "dev", "1.0.0-dev"],
                     "qa": ["1.0.0", "qa1", "1.0.0-qa1"], "dev2": ["1.0.0", "-", "1.0.0"]}, table
