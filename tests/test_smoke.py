"""The first thing a newcomer does: a demo cold start, then warm; private needs its key."""

from __future__ import annotations

import aiohttp

from .conftest import hello_service


async def test_demo_cold_then_warm_and_private_needs_key(wakegate) -> None:
    wg = wakegate({"environments": {"private": {}, "demo": {}},
                   "services": {"hello": hello_service()}})
    key = wg.new_keys()["private/hello"]
    async with aiohttp.ClientSession() as http:
        async with http.get(wg.base + "/", headers={"Host": wg.host("hello", "demo")}) as r:
            assert r.status == 200
            assert r.headers["X-Wakegate-Cold-Start"] == "true"
            assert r.headers["Server-Timing"].startswith("coldstart;dur=")
            assert (await r.json())["version"] == "1.0.0"
        async with http.get(wg.base + "/", headers={"Host": wg.host("hello", "demo")}) as r:
            assert r.status == 200
            assert "X-Wakegate-Cold-Start" not in r.headers
        async with http.get(wg.base + "/", headers={"Host": wg.host("hello", "private")}) as r:
            assert r.status == 401
        async with http.get(wg.base + "/", headers={"Host": wg.host("hello", "private"),
                                                     "X-API-Key": key}) as r:
            assert r.status == 200
