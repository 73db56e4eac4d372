"""Blue/green releases on the local runtime: push → promote → deploy → release promote/rollback.

Every host's version is read over HTTP from the example service, which
reports the WAKEGATE_VERSION it was started with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from .client import fetch, switch_under_load, version_of
from .conftest import Wakegate, hello_service, wait_until

Start = Callable[..., Wakegate]


def config(scale_down_delay: str = "30s") -> dict[str, Any]:
    envs = {"private": {"idle_timeout": "1h"}, "demo": {"idle_timeout": "1h"},
            "production": {"min_replicas": 2, "scale_down_delay": scale_down_delay,
                           "hold_timeout": "20s"}}
    return {"environments": envs,
            "services": {"hello": hello_service(environments=list(envs), version="1.0.0")}}


async def test_push_promote_deploy_release_promote_rollback(wakegate: Start) -> None:
    wg = wakegate(config())
    key = {"X-API-Key": wg.new_keys()["private/hello"]}
    wg.cli("push", "hello", "2.0.0", check=True)
    wg.cli("promote", "hello", check=True)
    assert await version_of(wg, "private", **key) == "2.0.0"
    assert await version_of(wg, "demo") == "2.0.0"
    assert await version_of(wg, "production") == "1.0.0"
    assert await version_of(wg, "prerelease") == "1.0.0", "no preview: the live colour"

    out = wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True).stdout
    assert "version 2.0.0" in out, out
    assert await version_of(wg, "prerelease") == "2.0.0"
    assert await version_of(wg, "production") == "1.0.0", "the preview is not live yet"
    status = wg.cli("release", "status", "hello", check=True).stdout
    assert "live colour blue" in status and "green  preview" in status, status
    # Production's default prefix is prod: each colour's version runs as `{version}-prod`.
    lines = {line.split()[0]: line for line in status.splitlines()[1:]}
    assert lines["blue"].endswith("tag 1.0.0-prod") and \
        lines["green"].endswith("tag 2.0.0-prod"), status

    out = wg.cli("release", "promote", "hello", check=True).stdout
    assert "2.0.0 is live (green; was 1.0.0)" in out, out
    assert await version_of(wg, "production") == "2.0.0"
    assert wg.metric("wakegate_release_active", environment="production", service="hello",
                     colour="green") == 1.0
    assert wg.metric("wakegate_release_active", environment="production", service="hello",
                     colour="blue") == 0.0

    out = wg.cli("release", "rollback", "hello", check=True).stdout
    assert "1.0.0 is live (blue; was 2.0.0)" in out, out
    assert await version_of(wg, "production") == "1.0.0"
    again = wg.cli("release", "promote", "hello")
    assert again.returncode == 2 and "nothing to promote" in again.stderr, again.stderr
    # A rollback repeated (after a timeout, say) does not switch back to 2.0.0.
    again = wg.cli("release", "rollback", "hello")
    assert again.returncode == 2 and "already rolled back" in again.stderr, again.stderr
    assert await version_of(wg, "production") == "1.0.0"


async def test_promote_and_rollback_under_load_fail_no_request(wakegate: Start) -> None:
    wg = wakegate(config())
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    host = wg.host("hello", "production")
    for command, version in (("promote", "2.0.0"), ("rollback", "1.0.0")):
        seen = await switch_under_load(
            wg.base, host, lambda c=command: wg.cli("release", c, "hello", check=True))
        print(f"local {command}: {len(seen.answers)} requests, {len(seen.failed())} failed")
        assert len(seen.answers) >= 2000
        assert not seen.failed(), seen.failed()[:5]
        assert seen.versions_after_switch() == {version}, command


async def test_a_websocket_on_the_old_colour_lives_until_the_drain_ends(wakegate: Start) -> None:
    wg = wakegate(config(scale_down_delay="1500ms"))
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    async with aiohttp.ClientSession() as http, http.ws_connect(wg.base + "/ws",
                               headers={"Host": wg.host("hello", "production")}) as ws:
        await ws.send_str("before")
        assert (await ws.receive(timeout=5)).data == "before"
        wg.cli("release", "promote", "hello", check=True)
        promoted = time.monotonic()
        await ws.send_str("after")
        assert (await ws.receive(timeout=5)).data == "after", "cut at the switch"
        closed = await ws.receive(timeout=10)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), closed
        assert time.monotonic() - promoted >= 1.0, "closed before the drain ended"
    status = json.loads(wg.cli("status", "--json", check=True).stdout)
    assert any(r["environment"] == "production" and r["version"] == "2.0.0" for r in status)


async def test_rollback_after_scale_down_holds_requests(wakegate: Start) -> None:
    wg = wakegate(config(scale_down_delay="200ms"))
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    wg.cli("release", "promote", "hello", check=True)
    wait_until(lambda: wg.api("/v1/release/status?service=hello")["colours"]["blue"]
               ["replicas"] == 0, 10.0, "the old colour to be scaled down")
    assert "scaled down in" not in wg.cli("release", "status", "hello", check=True).stdout
    wg.cli("release", "rollback", "hello", check=True)
    async with aiohttp.ClientSession() as http:
        answers = await asyncio.gather(*(fetch(http, wg.base, wg.host("hello", "production"))
                                         for _ in range(10)))
    for a in answers:
        assert a.status == 200, a
        assert a.body["version"] == "1.0.0"
    assert any(a.cold for a in answers), "held while the old colour started"


async def test_concurrent_promotes_exactly_one_wins(wakegate: Start) -> None:
    wg = wakegate(config())
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    results = await asyncio.gather(*(asyncio.to_thread(wg.cli, "release", "promote", "hello")
                                     for _ in range(4)))
    assert sum(r.returncode == 0 for r in results) == 1, [r.stderr for r in results]
    for r in results:
        if r.returncode:
            assert "under way" in r.stderr or "nothing to promote" in r.stderr, r.stderr
    assert await version_of(wg, "production") == "2.0.0"


async def test_restart_between_preview_and_switch(wakegate: Start) -> None:
    wg = wakegate(config())
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    assert wg.proc is not None
    wg.stop(sig=9)  # the controller dies between "preview ready" and "switch"
    wg.start()
    assert await version_of(wg, "production") == "1.0.0", "production kept its live colour"
    refused = wg.cli("release", "promote", "hello")
    assert refused.returncode == 2 and "not ready" in refused.stderr, refused.stderr
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    wg.cli("release", "promote", "hello", check=True)
    assert await version_of(wg, "production") == "2.0.0"


async def test_release_bad_input(wakegate: Start) -> None:
    wg = wakegate(config())
    for args, message in ((("release", "promote", "nope"), "no service nope"),
                          (("release", "promote", "hello"), "nothing to promote"),
                          (("release", "rollback", "hello"), "nothing to roll back"),
                          (("deploy", "hello", "2 0", "--env", "production"),
                           "not a valid version")):
        r = wg.cli(*args)
        assert r.returncode != 0 and message in r.stderr, (args, r.stderr)
    assert await version_of(wg, "production") == "1.0.0"


def post(wg: Wakegate, path: str, body: dict[str, Any],
         key: str | None = None) -> tuple[int, dict[str, Any]]:
    status, answer, _ = wg.call("POST", path, body,
                                headers={"Idempotency-Key": key} if key is not None else None)
    return status, answer


async def test_a_repeat_with_its_idempotency_key_gets_the_first_answer(wakegate: Start) -> None:
    """What the CLI does after a timeout: the same request, the same key."""
    wg = wakegate(config())
    wg.cli("deploy", "hello", "2.0.0", "--env", "production", check=True)
    body = {"service": "hello"}
    first, again = await asyncio.gather(
        asyncio.to_thread(post, wg, "/v1/release/promote", body, "k-1"),
        asyncio.to_thread(post, wg, "/v1/release/promote", body, "k-1"))
    assert first == again, (first, again)
    assert first[0] == 200 and first[1]["live"] == "green", first
    later = post(wg, "/v1/release/promote", body, "k-1")
    assert later == first, "a later repeat gets the same answer"
    other = post(wg, "/v1/release/promote", body, "k-2")
    assert other[0] == 409 and other[1]["error"] == "refused", "a new key is a new command"
    rollback = post(wg, "/v1/release/rollback", body, "k-1")
    assert rollback[0] == 200 and rollback[1]["live"] == "blue", "the key is per command"
    assert await version_of(wg, "production") == "1.0.0"
    bad = post(wg, "/v1/release/promote", body, "x" * 200)
    assert bad[0] == 400 and "Idempotency-Key" in bad[1]["message"], bad
