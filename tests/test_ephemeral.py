"""Ephemeral environments on the local runtime: `wakegate env create/list/extend/delete` and
/v1/environments, through a real `wakegate up`, real services and real HTTP.

An ephemeral environment is asleep until its first request, sleeps when idle, and at its
expiry (or delete) its routes go at once (held requests get 404 no_route), requests and
WebSockets in flight get its drain timeout (the source's scale_down_delay), then its
processes stop and nothing of it is left in state_dir.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from .client import get, get_once
from .conftest import Wakegate, hello_service, wait_until
from .procs import alive

Start = Callable[..., Wakegate]

DRAIN = 2.0  # seconds: the source's scale_down_delay, the ephemeral environment's drain
SLOW_START_MS = 1500  # "slow" takes this long to start: a request to it is held meanwhile


def config(max_environments: int = 20, **ephemeral: str) -> dict[str, Any]:
    demo = ["demo"]
    return {
        "max_ephemeral_environments": max_environments,
        "ephemeral": {"idle_timeout": "500ms", "ttl": "1h", "max_ttl": "2h", **ephemeral},
        "environments": {"demo": {"idle_timeout": "1h", "hold_timeout": "20s",
                                  "scale_down_delay": f"{DRAIN}s"}},
        "services": {
            "hello": hello_service(environments=demo),
            "slow": hello_service(environments=demo, version="3.0.0",
                                  env={"HELLO_STARTUP_DELAY_MS": str(SLOW_START_MS)}),
        },
    }


def create(wg: Wakegate, name: str, **fields: Any) -> tuple[int, Any]:
    status, body, _ = wg.call("POST", "/v1/environments", {"name": name, "from": "demo",
                                                           **fields})
    return status, body


def environments(wg: Wakegate) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in wg.api("/v1/environments")["environments"]}


def state_file(wg: Wakegate, name: str) -> dict[str, Any]:
    path = Path(wg.state_dir) / name
    return json.loads(path.read_text()) if path.exists() else {}


def entries_of(wg: Wakegate, environment: str) -> dict[str, list[str]]:
    """What the state files still hold of an environment (empty lists: nothing)."""
    return {
        "ephemeral.json": [n for n in state_file(wg, "ephemeral.json") if n == environment],
        "versions.json": [n for n in state_file(wg, "versions.json")
                          if n.startswith(f"{environment}/")],
        "keys.json": [n for n in state_file(wg, "keys.json") if n.startswith(f"{environment}/")],
    }


NOTHING_LEFT = {"ephemeral.json": [], "versions.json": [], "keys.json": []}


def gone(wg: Wakegate, name: str) -> bool:
    return name not in environments(wg) and entries_of(wg, name) == NOTHING_LEFT


async def test_create_wake_sleep_and_expire_with_a_held_request_and_a_websocket(
    wakegate: Start,
) -> None:
    wg = wakegate(config())
    status, made = create(wg, "pr-1", ttl="1h", versions={"hello": "2.0.0"})
    assert status == 201, made
    assert made["kind"] == "ephemeral" and made["source"] == "demo" and "key" not in made
    assert made["expires"] - made["created"] == 3600
    assert made["urls"] == {s: f"http://{s}.pr-1.localhost:{wg.proxy_port}/"
                            for s in ("hello", "slow")}
    entry = environments(wg)["pr-1"]
    assert {s: i["state"] for s, i in entry["services"].items()} == \
        {"hello": "sleeping", "slow": "sleeping"}, "asleep until its first request"
    assert entry["services"]["hello"]["version"] == "2.0.0"
    assert entry["services"]["slow"]["version"] == "3.0.0", "the source's version"
    assert wg.service_pids() == []

    first = await get_once(wg, "hello", "pr-1")
    assert (first.status, first.cold, first.body["version"]) == (200, True, "2.0.0"), first
    pid = first.body["pid"]
    await asyncio.to_thread(wg.wait_state, "pr-1", "hello", "sleeping", 5.0)
    assert not alive(pid), "asleep: its process is stopped"
    again = await get_once(wg, "hello", "pr-1")
    assert (again.status, again.cold) == (200, True), again
    # A version deployed to it is kept in versions.json until it is gone.
    deployed = await asyncio.to_thread(wg.cli, "deploy", "slow", "3.1.0", "--env", "pr-1")
    assert deployed.returncode == 0, deployed.stderr
    assert entries_of(wg, "pr-1")["versions.json"] == ["pr-1/slow"]

    async with aiohttp.ClientSession() as http, http.ws_connect(
        wg.base + "/ws", headers={"Host": wg.host("hello", "pr-1")},
    ) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "before"
        ws_pid = (await get(http, wg, "hello", "pr-1")).body["pid"]
        held = asyncio.ensure_future(get(http, wg, "slow", "pr-1"))
        await asyncio.to_thread(wg.wait_state, "pr-1", "slow", "starting", 5.0)
        status, extended, _ = wg.call("POST", "/v1/environments/pr-1/extend", {"ttl": "1s"})
        assert status == 200, extended
        extended_at = time.monotonic()
        answer = await asyncio.wait_for(held, 10.0)
        answered_after = time.monotonic() - extended_at
        assert (answer.status, answer.body["error"]) == (404, "no_route"), answer
        assert answered_after < 1.0 + SLOW_START_MS / 1000 - 0.2, \
            f"the held request was answered {answered_after:.2f}s after the extend: not at once"
        # The WebSocket is in flight: it gets the drain timeout, then is closed.
        await ws.send_str("during the drain")
        assert (await ws.receive(timeout=5)).data == "during the drain"
        # A delete meanwhile joins the removal under way (never a second one), and is
        # answered once everything of it is gone.
        deleting = asyncio.ensure_future(
            asyncio.to_thread(wg.call, "DELETE", "/v1/environments/pr-1"))
        closed = await ws.receive(timeout=DRAIN + 10)
        closed_after = time.monotonic() - extended_at
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                               aiohttp.WSMsgType.CLOSING), closed
        assert closed_after >= 1.0 + DRAIN - 0.3, f"closed {closed_after:.2f}s in: no drain"
        status, deleted, _ = await asyncio.wait_for(deleting, 15.0)
        assert (status, deleted) == (200, {"name": "pr-1", "deleted": True}), deleted
    assert gone(wg, "pr-1")
    log = wg.stderr()
    assert log.count("ephemeral environment pr-1 expired: everything of it is gone") == 1, log
    assert "pr-1 deleted" not in log, "removed once, by the expiry"
    assert not alive(ws_pid)
    await asyncio.to_thread(wait_until, lambda: not wg.service_pids(), 10.0,
                            "every process of pr-1 to be gone (the slow start too)")
    after = await get_once(wg, "hello", "pr-1")
    assert (after.status, after.body["error"]) == (404, "no_route"), after
    # The name is free again at once.
    assert create(wg, "pr-1")[0] == 201
    assert environments(wg)["pr-1"]["services"]["hello"]["version"] == "1.0.0"


async def test_extend_moves_the_expiry(wakegate: Start) -> None:
    wg = wakegate(config())
    assert create(wg, "pr-2", ttl="30m")[0] == 201
    result = await asyncio.to_thread(wg.cli, "env", "extend", "pr-2", "--ttl", "2h")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pr-2: expires "), result.stdout
    entry = environments(wg)["pr-2"]
    assert abs(entry["expires"] - (time.time() + 7200)) < 5, entry
    assert 7190 < entry["expires_in"] <= 7200, entry
    status, body, _ = wg.call("POST", "/v1/environments/pr-2/extend", {"ttl": "3h"})
    assert (status, body["error"]) == (400, "bad_ttl"), body
    assert "3h is longer than the limit, 2h (ephemeral.max_ttl" in body["message"], body
    status, body, _ = wg.call("POST", "/v1/environments/demo/extend", {"ttl": "1h"})
    assert (status, body["error"]) == (409, "not_ephemeral"), body
    status, body, _ = wg.call("POST", "/v1/environments/nope/extend", {"ttl": "1h"})
    assert (status, body["error"]) == (404, "unknown_environment"), body
    assert environments(wg)["pr-2"]["expires"] == entry["expires"], "refusals change nothing"
    assert state_file(wg, "ephemeral.json")["pr-2"]["expires"] == entry["expires"]


async def test_delete_stops_it_and_forgets_it(wakegate: Start) -> None:
    wg = wakegate(config())
    assert create(wg, "pr-3")[0] == 201
    pid = (await get_once(wg, "hello", "pr-3")).body["pid"]
    result = await asyncio.to_thread(wg.cli, "env", "delete", "pr-3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pr-3: deleted"), result.stdout
    # Answered once everything of it is gone.
    assert not alive(pid)
    assert gone(wg, "pr-3")
    answer = await get_once(wg, "hello", "pr-3")
    assert (answer.status, answer.body["error"]) == (404, "no_route"), answer
    again = await asyncio.to_thread(wg.cli, "env", "delete", "pr-3")
    assert again.returncode == 2 and "There is no ephemeral environment 'pr-3'" in \
        again.stderr, again
    status, body, _ = wg.call("DELETE", "/v1/environments/demo")
    assert (status, body["error"]) == (409, "not_ephemeral"), body
    assert "demo" in environments(wg), "the config's environment is untouched"


async def test_survives_a_restart_and_expires_on_time_after_it(wakegate: Start) -> None:
    wg = wakegate(config())
    status, lasting = create(wg, "pr-4", ttl="6s")
    assert status == 201, lasting
    status, short = create(wg, "pr-5", ttl="1s")
    assert status == 201, short
    assert (await get_once(wg, "hello", "pr-4")).status == 200
    wg.stop()
    # pr-5 expires while wakegate is down: it goes as soon as wakegate is up again.
    await asyncio.to_thread(wait_until, lambda: time.time() > short["expires"] + 0.5, 5.0,
                            "pr-5's expiry to pass")
    wg.start()
    await asyncio.to_thread(wait_until, lambda: gone(wg, "pr-5"), 3.0,
                            "pr-5 to be gone after the restart")
    entry = environments(wg).get("pr-4")
    assert entry is not None, "an ephemeral environment survives a restart"
    assert entry["expires"] == lasting["expires"]
    assert {s: i["state"] for s, i in entry["services"].items()} == \
        {"hello": "sleeping", "slow": "sleeping"}, "asleep after the restart"
    assert (await get_once(wg, "hello", "pr-4")).status == 200, "it still serves"
    await asyncio.to_thread(wait_until, lambda: gone(wg, "pr-4"), 15.0, "pr-4 to expire")
    late = time.time() - lasting["expires"]
    assert -1.0 <= late < 3.0, f"expired {late:+.1f}s from its expiry"


async def test_the_limit_says_how_many_exist(wakegate: Start) -> None:
    wg = wakegate(config(max_environments=2))
    assert create(wg, "a1")[0] == 201
    assert create(wg, "a2")[0] == 201
    status, body = create(wg, "a3")
    assert (status, body["error"]) == (409, "too_many_environments"), body
    assert "2 ephemeral environments exist, and the limit is 2 " \
           "(max_ephemeral_environments of the config)" in body["message"], body
    result = await asyncio.to_thread(wg.cli, "env", "create", "a3", "--from", "demo")
    assert result.returncode == 2 and "the limit is 2" in result.stderr, result
    assert sorted(state_file(wg, "ephemeral.json")) == ["a1", "a2"]
    assert wg.metric("wakegate_ephemeral_environments") == 2.0
    assert wg.call("DELETE", "/v1/environments/a1")[0] == 200
    assert create(wg, "a3")[0] == 201


async def test_bad_requests_get_precise_errors_and_make_nothing(wakegate: Start) -> None:
    wg = wakegate(config())
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        ({"name": "1pr"}, 400, "bad_name", "not a valid environment name"),
        ({"name": "pr_1"}, 400, "bad_name", "1 to 24 letters, digits and dashes"),
        ({"name": "p" * 25}, 400, "bad_name", "not a valid environment name"),
        ({"name": "production"}, 400, "bad_name", "reserved"),
        ({"name": "pr-"}, 400, "bad_name", "must end with a letter or digit"),
        ({"name": "demo"}, 409, "environment_exists", "already an environment 'demo'"),
        ({"name": "DEMO"}, 409, "environment_exists", "already an environment 'demo'"),
        ({"ttl": "2 days"}, 400, "bad_ttl", 'bad duration "2 days"'),
        ({"ttl": "0s"}, 400, "bad_ttl", "must be at least 1s, got 0s"),
        ({"ttl": "500ms"}, 400, "bad_ttl", "must be at least 1s"),
        ({"ttl": -5}, 400, "bad_ttl", "cannot be negative"),
        ({"ttl": "3h"}, 400, "bad_ttl", "3h is longer than the limit, 2h"),
        ({"ttl": True}, 400, "bad_ttl", "bad duration"),
        ({"from": "nope"}, 404, "unknown_environment", "'nope' to copy; known: demo."),
        ({"versions": {"web": "1.0"}}, 400, "unknown_service", "runs hello, slow"),
        ({"versions": {"hello": "1 0"}}, 400, "bad_version", "not a valid version"),
        ({"versions": {"hello": 2}}, 400, "bad_version", "must be a string"),
        ({"versions": ["hello"]}, 400, "bad_request", "versions: must be an object"),
        ({"access": "secret"}, 400, "bad_request", 'must be "public" or "api_key"'),
        ({"name": 5}, 400, "bad_request", "must be strings"),
        ({"colour": "blue"}, 400, "bad_request", "Unknown field 'colour'"),
    ]
    for fields, status, code, words in cases:
        got, body = create(wg, **{"name": "pr-9", **fields})  # type: ignore[arg-type]
        assert (got, body["error"]) == (status, code), (fields, body)
        assert words in body["message"], (fields, body)
    got, body, _ = wg.call("POST", "/v1/environments", b"{not json")
    assert (got, body["error"]) == (400, "bad_request"), body
    got, body, _ = wg.call("POST", "/v1/environments", {"name": "pr-9", "from": "demo"},
                           token=None)
    assert got == 401, body
    result = await asyncio.to_thread(wg.cli, "env", "create", "pr_9", "--from", "demo")
    assert result.returncode == 2 and "not a valid environment name" in result.stderr, result
    result = await asyncio.to_thread(wg.cli, "env", "create", "pr-9", "--from", "demo",
                                     "--set", "hello")
    assert result.returncode == 2 and "give SERVICE=VERSION" in result.stderr, result
    assert list(environments(wg)) == ["demo"], "nothing was made"
    assert state_file(wg, "ephemeral.json") == {}
    assert wg.service_pids() == []


async def test_api_key_access_one_key_for_every_service(wakegate: Start) -> None:
    wg = wakegate(config())
    result = await asyncio.to_thread(wg.cli, "env", "create", "pr-6", "--from", "demo",
                                     "--access", "api_key", "--set", "slow=3.2.0")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    key = lines[-1]
    assert key.startswith("wg_") and key.strip() == key, lines
    assert any(f"http://hello.pr-6.localhost:{wg.proxy_port}/" in line for line in lines)
    assert any(f"http://slow.pr-6.localhost:{wg.proxy_port}/" in line for line in lines)
    for service in ("hello", "slow"):
        refused = await get_once(wg, service, "pr-6")
        assert refused.status == 401, refused
        served = await get_once(wg, service, "pr-6", **{"X-API-Key": key})
        assert served.status == 200, served
    assert served.body["version"] == "3.2.0"
    assert entries_of(wg, "pr-6")["keys.json"] == ["pr-6/hello", "pr-6/slow"]
    assert key not in wg.stderr(), "the key is never logged"
    listed = await asyncio.to_thread(wg.cli, "env", "list")
    assert listed.returncode == 0 and "pr-6" in listed.stdout and key not in listed.stdout
    logs = Path(wg.state_dir) / "logs"
    assert sorted(p.name for p in logs.glob("pr-6.*")) == ["pr-6.hello.log", "pr-6.slow.log"]
    assert 'environment="pr-6"' in wg.metrics_text()
    assert wg.call("DELETE", "/v1/environments/pr-6")[0] == 200
    assert gone(wg, "pr-6"), "its key is gone with it"
    assert list(logs.glob("pr-6.*")) == [], "and its processes' logs"
    assert 'environment="pr-6"' not in wg.metrics_text(), "and its series in /metrics"


async def test_a_copy_of_a_private_environment_needs_a_key_unless_told_otherwise(
    wakegate: Start,
) -> None:
    cfg = config()
    cfg["environments"]["private"] = {"idle_timeout": "1h"}
    cfg["services"]["hello"]["environments"] = ["demo", "private"]
    wg = wakegate(cfg)
    result = await asyncio.to_thread(wg.cli, "env", "create", "pr-8", "--from", "private")
    assert result.returncode == 0, result.stderr
    key = result.stdout.splitlines()[-1]
    assert key.startswith("wg_"), result.stdout
    assert environments(wg)["pr-8"]["access"] == "api_key"
    refused = await get_once(wg, "hello", "pr-8")
    assert (refused.status, refused.body["error"]) == (401, "unauthorized"), refused
    assert (await get_once(wg, "hello", "pr-8", **{"X-API-Key": key})).status == 200
    # Public only when the caller (holding the controller's token) says so.
    status, body = create(wg, "pr-9", **{"from": "private", "access": "public"})
    assert (status, body["access"], "key" in body) == (201, "public", False), body
    assert "ephemeral environment pr-9 is a PUBLIC copy of private" in wg.stderr()


async def test_a_config_environment_may_not_take_a_kept_ephemeral_name(
    wakegate: Start,
) -> None:
    wg = wakegate(config())
    assert create(wg, "pr-1")[0] == 201
    assert wg.stop() == 0
    wg.config["environments"]["PR-1"] = {"kind": "demo"}
    wg.write_config()
    code, stderr = wg.run_to_exit()
    assert code == 2 and "Traceback" not in stderr, stderr
    path = (Path(wg.state_dir) / "ephemeral.json").resolve()
    assert f"{path}: pr-1: an ephemeral environment of this name exists, and " \
        f"{wg.config_path} defines environments.PR-1: rename that one, or start without it " \
        "and delete the ephemeral one first (wakegate env delete pr-1)" in stderr, stderr
    assert list(state_file(wg, "ephemeral.json")) == ["pr-1"], "nothing was lost"


async def test_a_removal_cut_short_by_a_stop_is_finished_after_the_restart(
    wakegate: Start,
) -> None:
    wg = wakegate(config())
    assert create(wg, "pr-2", ttl="1h")[0] == 201
    async with aiohttp.ClientSession() as http, http.ws_connect(
        wg.base + "/ws", headers={"Host": wg.host("hello", "pr-2")},
    ) as ws:
        await ws.send_str("open")
        assert (await ws.receive(timeout=5)).data == "open"
        # The WebSocket keeps the removal draining (DRAIN seconds); wakegate stops meanwhile.
        deleting = asyncio.ensure_future(
            asyncio.to_thread(wg.call, "DELETE", "/v1/environments/pr-2"))
        await asyncio.to_thread(wait_until, lambda: "pr-2" not in environments(wg), 5.0,
                                "pr-2's routes to go")
        assert wg.stop() == 0
        await asyncio.gather(deleting, return_exceptions=True)
    assert list(state_file(wg, "ephemeral.json")) == ["pr-2"], "cut short: the record is kept"
    assert state_file(wg, "ephemeral.json")["pr-2"]["expires"] <= time.time(), \
        "... as expired, before anything was stopped"
    wg.start()
    await asyncio.to_thread(wait_until, lambda: gone(wg, "pr-2"), 5.0,
                            "pr-2 to be gone after the restart, not back")


async def test_a_new_environment_inherits_nothing_from_an_old_one_of_its_name(
    wakegate: Start,
) -> None:
    cfg = config()
    cfg["environments"]["qa"] = {"kind": "private", "idle_timeout": "1h"}
    cfg["services"]["hello"]["environments"] = ["demo", "qa"]
    wg = wakegate(cfg)
    await asyncio.to_thread(wg.cli, "deploy", "hello", "1.5.0", "--env", "qa", check=True)
    old_key = (await asyncio.to_thread(wg.cli, "keys", "create", "hello", "--env", "qa",
                                       check=True)).stdout.splitlines()[-1]
    del wg.config["environments"]["qa"]
    wg.config["services"]["hello"]["environments"] = ["demo"]
    wg.write_config()
    await asyncio.to_thread(wg.cli, "apply", check=True)
    status, made = create(wg, "qa", access="api_key")
    assert status == 201, made
    assert environments(wg)["qa"]["services"]["hello"]["version"] == \
        environments(wg)["demo"]["services"]["hello"]["version"], "the source's version"
    refused = await get_once(wg, "hello", "qa", **{"X-API-Key": old_key})
    assert refused.status == 401, "the old environment's key opens nothing"
    assert (await get_once(wg, "hello", "qa", **{"X-API-Key": made["key"]})).status == 200


async def test_extend_and_delete_take_the_name_in_any_case_and_nothing_else(
    wakegate: Start,
) -> None:
    wg = wakegate(config())
    assert create(wg, "pr-10")[0] == 201
    status, body, _ = wg.call("POST", "/v1/environments/PR-10/extend", {"ttl": "90m"})
    assert (status, body["name"], body["expires_in"] > 5000) == (200, "pr-10", True), body
    status, body, _ = wg.call("POST", "/v1/environments/pr-10/extend", {"ttl": "1m", "x": 1})
    assert (status, body["error"]) == (400, "bad_request") and "Unknown field x" in \
        body["message"], body
    status, body, _ = wg.call("DELETE", "/v1/environments/" + "n" * 3000)
    assert status == 404 and len(body["message"]) < 200, body
    status, body, _ = wg.call("DELETE", "/v1/environments/Pr-10")
    assert (status, body) == (200, {"name": "pr-10", "deleted": True})
    assert gone(wg, "pr-10")
