"""Versions: push to private, promote to demo, deploy anywhere (not blue/green yet).

Real `wakegate up` processes, the CLI as a user types it, and each host's
version read over HTTP from the example service (it reports WAKEGATE_VERSION).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

from .client import fetch, version_of
from .conftest import HELLO, Wakegate, hello_service, wait_until

Start = Callable[..., Wakegate]


def config(**environments: Any) -> dict[str, Any]:
    envs = {"private": {"idle_timeout": "1h"}, "demo": {"idle_timeout": "1h"}}
    envs.update(environments)
    return {
        "environments": envs,
        "services": {"hello": hello_service(environments=list(envs), version="1.0.0")},
    }


_KEYS: dict[str, str] = {}  # state_dir → the private key `up` printed once


async def version_at(wg: Wakegate, environment: str) -> str:
    headers = {}
    if environment == "private":
        state = str(wg.state_dir)
        if state not in _KEYS:
            _KEYS[state] = wg.new_keys()["private/hello"]
        headers["X-API-Key"] = _KEYS[state]
    return await version_of(wg, environment, **headers)


async def test_push_then_promote(wakegate: Start) -> None:
    wg = wakegate(config())
    assert await version_at(wg, "private") == "1.0.0"
    assert await version_at(wg, "demo") == "1.0.0"

    out = wg.cli("push", "hello", "1.1.0", check=True).stdout
    assert "private/hello: version 1.1.0 (was 1.0.0)" in out, out
    assert await version_at(wg, "private") == "1.1.0"
    assert await version_at(wg, "demo") == "1.0.0", "push touches private only"

    out = wg.cli("promote", "hello", check=True).stdout
    assert "demo/hello: version 1.1.0 (was 1.0.0)" in out, out
    assert await version_at(wg, "demo") == "1.1.0"
    # Safe to repeat after a timeout: nothing happens twice.
    again = wg.cli("promote", "hello", check=True).stdout
    assert "already at version 1.1.0" in again, again
    assert wg.status()[("demo", "hello")]["version"] == "1.1.0"


async def test_a_sleeping_instance_stays_asleep_and_wakes_with_the_new_version(
    wakegate: Start,
) -> None:
    wg = wakegate(config())
    wg.cli("push", "hello", "2.0.0", check=True)
    row = wg.status()[("private", "hello")]
    assert (row["state"], row["version"]) == ("sleeping", "2.0.0"), row
    assert wg.service_pids() == [], "nothing was started by the push"
    assert await version_at(wg, "private") == "2.0.0"


async def test_a_running_instance_is_replaced_without_a_failed_request(wakegate: Start) -> None:
    wg = wakegate(config())
    key = wg.new_keys()["private/hello"]
    host = wg.host("hello", "private")
    seen: list[tuple[int, str]] = []
    stop = asyncio.Event()

    async def load(http: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            a = await fetch(http, wg.base, host, **{"X-API-Key": key})
            seen.append((a.status, a.body.get("version") if isinstance(a.body, dict) else ""))

    async with aiohttp.ClientSession() as http:
        first = await fetch(http, wg.base, host, **{"X-API-Key": key})
        assert first.status == 200
        clients = [asyncio.ensure_future(load(http)) for _ in range(4)]
        done = await asyncio.to_thread(wg.cli, "push", "hello", "3.0.0")
        assert done.returncode == 0, done.stderr
        after = len(seen)
        await asyncio.to_thread(wait_until, lambda: len(seen) >= after + 20, 10.0,
                                "requests after the push")
        stop.set()
        await asyncio.gather(*clients)
    assert all(status == 200 for status, _ in seen), [s for s in seen if s[0] != 200][:5]
    assert {v for _, v in seen[after:]} == {"3.0.0"}, "after the push only 3.0.0 answers"
    assert first.body["pid"] not in wg.service_pids(), "the old replica was stopped"


async def test_a_version_that_does_not_start_changes_nothing(wakegate: Start) -> None:
    cfg = config()
    # Version 9.9.9 of this service exits at start (the command gets {version}).
    cfg["services"]["hello"]["command"] = (
        f'/bin/sh -c "[ {{version}} = 9.9.9 ] && exit 3; exec {{python}} {HELLO}"')
    wg = wakegate(cfg)
    assert await version_at(wg, "private") == "1.0.0"
    result = wg.cli("push", "hello", "9.9.9")
    assert result.returncode != 0
    assert "did not start" in result.stderr and "old one keeps serving" in result.stderr
    assert await version_at(wg, "private") == "1.0.0"
    assert wg.status()[("private", "hello")]["version"] == "1.0.0"


async def test_versions_survive_a_restart_and_project_environments_start_public(
    wakegate: Start,
) -> None:
    wg = wakegate(config())
    assert await version_at(wg, "private") == "1.0.0"
    wg.cli("push", "hello", "4.0.0", check=True)
    wg.cli("promote", "hello", check=True)
    wg.stop()
    versions = json.loads((wg.state_dir / "versions.json").read_text())
    assert versions == {"private/hello": "4.0.0", "demo/hello": "4.0.0"}, versions
    # The service is placed in a new project environment: it starts at the demo version.
    cfg = config(staging={})
    wg.config["environments"] = cfg["environments"]
    wg.config["services"] = cfg["services"]
    wg.write_config()
    wg.start()
    assert await version_at(wg, "private") == "4.0.0"
    assert await version_at(wg, "staging") == "4.0.0"


async def test_bad_deploys_are_refused_and_change_nothing(wakegate: Start) -> None:
    wg = wakegate(config(production={}))
    cases = [
        (("deploy", "nope", "1.0.0", "--env", "demo"), "no instance demo/nope"),
        (("deploy", "hello", "1.0.0", "--env", "nowhere"), "no instance nowhere/hello"),
        (("push", "hello", "1.0 ; rm -rf /"), "not a valid version"),
        (("push", "hello", "$(id)"), "not a valid version"),
        (("deploy", "hello", "2.0.0", "--env", "prerelease"), "no instance prerelease/hello"),
        (("promote", "nope"), "no service nope"),
    ]
    for args, message in cases:
        result = wg.cli(*args)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr
    assert {row["version"] for row in wg.status().values()} == {"1.0.0"}
    assert not (wg.state_dir / "versions.json").exists()
