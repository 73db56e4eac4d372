"""Environments added to or removed from the config take effect on `wakegate apply`: an added
one's instances appear asleep, a removed one's processes are stopped and its routes gone."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .client import get_once
from .conftest import Wakegate, wait_for

Start = Callable[..., Wakegate]
ENVIRONMENT_UPSTREAM = Path(__file__).resolve().parent / "upstreams" / "environment.py"


def config(environments: dict[str, Any]) -> dict[str, Any]:
    return {
        "environments": environments,
        "services": {"api": {
            "command": f"{sys.executable} {ENVIRONMENT_UPSTREAM} --port {{port}}",
            "environments": list(environments), "stop_grace": "2s",
        }},
    }


async def apply(wg: Wakegate, environments: dict[str, Any]) -> str:
    wg.config = {**config(environments), "listen": wg.config["listen"],
                 "state_dir": wg.config["state_dir"]}
    wg.write_config()
    return (await asyncio.to_thread(wg.cli, "apply", check=True)).stdout


async def test_an_environment_comes_and_goes_with_its_block(wakegate: Start) -> None:
    demo = {"idle_timeout": "1h"}
    wg = wakegate(config({"demo": demo}))
    assert (await get_once(wg, "api", "demo")).status == 200
    demo_pids = set(wg.service_pids())
    assert len(demo_pids) == 1, demo_pids

    out = await apply(wg, {"demo": demo, "qa": {"kind": "demo", "idle_timeout": "1h"}})
    assert "added: qa/api" in out, out
    assert wg.state("qa", "api") == "sleeping", "a new environment appears asleep"
    answer = await get_once(wg, "api", "qa")
    assert (answer.status, answer.cold) == (200, True), answer
    assert answer.body["WAKEGATE_ENVIRONMENT"] == "qa", answer.body
    qa_pids = set(wg.service_pids()) - demo_pids
    assert len(qa_pids) == 1, qa_pids

    out = await apply(wg, {"demo": demo})
    assert "removed: qa/api" in out, out
    await wait_for(lambda: qa_pids.isdisjoint(wg.service_pids()), 5.0, "qa's process to stop")
    assert set(wg.service_pids()) == demo_pids, "demo's process was left alone"
    gone = await get_once(wg, "api", "qa")
    assert gone.status == 404 and gone.body["error"] == "no_route", gone
    assert (await get_once(wg, "api", "demo")).status == 200
    assert [env for env, _ in wg.status()] == ["demo"]


async def test_removing_an_environment_while_it_wakes_leaves_no_process(wakegate: Start) -> None:
    slow = {"kind": "demo", "idle_timeout": "1h"}
    wg = wakegate(config({"demo": {"idle_timeout": "1h"}, "qa": slow}))
    wg.config["services"]["api"]["env"] = {"START_DELAY_MS": "1500"}
    wg.write_config()
    await asyncio.to_thread(wg.cli, "apply", check=True)
    held = asyncio.ensure_future(get_once(wg, "api", "qa"))
    await wait_for(lambda: wg.state("qa", "api") == "starting", 5.0, "qa/api to start")
    await apply(wg, {"demo": {"idle_timeout": "1h"}})
    answer = await asyncio.wait_for(held, 5.0)
    assert answer.status == 404 and answer.body["error"] == "no_route", answer
    # The process that was starting is stopped once its start is over, not left behind.
    await wait_for(lambda: not wg.service_pids(), 5.0, "qa's starting process to stop")


async def test_apply_refuses_a_config_environment_named_like_an_ephemeral_one(
    wakegate: Start,
) -> None:
    demo = {"idle_timeout": "1h"}
    wg = wakegate(config({"demo": demo}))
    await asyncio.to_thread(wg.cli, "env", "create", "pr-7", "--from", "demo", check=True)
    wg.config = {**config({"demo": demo, "pr-7": {"kind": "demo"}}),
                 "listen": wg.config["listen"], "state_dir": wg.config["state_dir"]}
    wg.write_config()
    refused = await asyncio.to_thread(wg.cli, "apply")
    assert refused.returncode == 2, refused
    assert "environments.pr-7: an ephemeral environment of that name exists; delete it " \
        "first (wakegate env delete pr-7)" in refused.stderr, refused.stderr
    assert wg.status()[("pr-7", "api")]["state"] == "sleeping", "the ephemeral one is kept"
