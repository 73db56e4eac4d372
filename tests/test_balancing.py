"""Least outstanding requests: a new request goes to the replica that is not busy.

An instance with two replicas of the hello service (whose `GET /` answers with
its pid, so each answer says which replica served it), behind two wakegates:
the llhttp fast path on and off (tests/both_paths.py). A request held on one
replica (`/slow`, or an open WebSocket) sends every new request to the other;
once it ends, however it ends (the client leaving included), both replicas get
requests again: with no load, ties go round the replicas.

The proxy's in-flight gauge (wakegate_requests_in_flight) says when the held
request has reached the proxy: it is counted there in the same step as the
balancer counts it on its endpoint, on both paths. The balancer's own
bookkeeping (distinct draws, retries elsewhere, the counts of endpoints gone
from the table dropped) is checked on its own at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import Iterator

import aiohttp
import pytest

from controller.spec import Route, RouteTable
from proxy.balancer import LeastOutstanding

from .both_paths import PATHS, both_paths
from .client import Answer, get, host
from .conftest import Wakegate, hello_service, wait_for

ENV = "staging"  # public, always on
SERVICE = "hello"
HOST = host(SERVICE, ENV)
REPLICAS = 2
FOLLOWING = 12  # requests sent while one is held: round robin would send half to the busy one
HELD_MS = 20_000  # /slow's sleep: longer than any test waits for it
DEADLINE = 10.0


@pytest.fixture(scope="module")
def gates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Wakegate]]:
    config = {
        "environments": {ENV: {"min_replicas": REPLICAS, "max_replicas": REPLICAS}},
        "services": {SERVICE: hello_service(environments=[ENV], stop_grace="1s")},
    }
    with both_paths(tmp_path_factory.mktemp("balancing"), config, (ENV, SERVICE)) as wgs:
        yield wgs


@pytest.fixture(params=PATHS)
async def wg(request: pytest.FixtureRequest, gates: dict[str, Wakegate]) -> Wakegate:
    """One of the two wakegates, its proxy serving both replicas, nothing in flight."""
    wg = gates[request.param]
    await wait_for(lambda: len(wg.service_pids()) == REPLICAS, DEADLINE, "two replicas")
    await both_replicas_answer(wg)
    await wait_for(lambda: in_flight(wg) == 0, DEADLINE, "no request in flight")
    return wg


def in_flight(wg: Wakegate) -> float:
    return wg.metric("wakegate_requests_in_flight", environment=ENV, service=SERVICE) or 0.0


async def pid_of(http: aiohttp.ClientSession, wg: Wakegate) -> int:
    answer: Answer = await get(http, wg, SERVICE, ENV)
    assert answer.status == 200, answer
    return int(answer.body["pid"])


async def both_replicas_answer(wg: Wakegate) -> None:
    """Requests in turn until each replica has answered one: the proxy routes to both (an
    endpoint whose count leaked stays busy forever, and never answers here)."""
    seen: set[int] = set()
    async with aiohttp.ClientSession() as http:
        async with asyncio.timeout(DEADLINE):
            while len(seen) < REPLICAS:
                seen.add(await pid_of(http, wg))
    assert seen == set(wg.service_pids()), (seen, wg.service_pids())


async def all_go_to_one_replica(wg: Wakegate) -> int:
    """FOLLOWING requests in turn: the pid of the one replica that answered them all."""
    async with aiohttp.ClientSession() as http:
        pids = [await pid_of(http, wg) for _ in range(FOLLOWING)]
    assert len(set(pids)) == 1, f"requests went to the busy replica too: {pids}"
    assert pids[0] in wg.service_pids()
    return pids[0]


async def test_a_slow_request_sends_the_next_ones_to_the_other_replica(wg: Wakegate) -> None:
    async with aiohttp.ClientSession() as held_client:
        held = asyncio.ensure_future(get(held_client, wg, SERVICE, ENV, f"/slow?ms={HELD_MS}"))
        try:
            await wait_for(lambda: in_flight(wg) == 1, DEADLINE, "the slow request in flight")
            idle = await all_go_to_one_replica(wg)
            # The busy one is the other replica: still held, it answered none of them.
            assert not held.done()
            assert len(set(wg.service_pids()) - {idle}) == 1
        finally:
            held.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await held
    await wait_for(lambda: in_flight(wg) == 0, DEADLINE, "the slow request to be over")
    await both_replicas_answer(wg)


async def test_a_client_that_leaves_mid_request_frees_its_replica(wg: Wakegate) -> None:
    sock = socket.create_connection(("127.0.0.1", wg.proxy_port))
    try:
        sock.sendall(f"GET /slow?ms={HELD_MS} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        await wait_for(lambda: in_flight(wg) == 1, DEADLINE, "the slow request in flight")
        await all_go_to_one_replica(wg)
    finally:
        sock.close()  # gone before any answer: the proxy's 499
    await wait_for(lambda: in_flight(wg) == 0, DEADLINE, "the request to end with its client")
    # Its replica (still sleeping on it) is idle as far as the proxy knows: new requests
    # reach it again.
    await both_replicas_answer(wg)


async def test_an_open_websocket_counts_on_its_replica_until_it_closes(wg: Wakegate) -> None:
    async with aiohttp.ClientSession() as http, \
            http.ws_connect(wg.base + "/ws", headers={"Host": HOST}) as ws:
        await ws.send_str("ping")
        assert (await ws.receive_str(timeout=DEADLINE)) == "ping"
        await all_go_to_one_replica(wg)
    await wait_for(lambda: in_flight(wg) == 0, DEADLINE, "the WebSocket to be over")
    await both_replicas_answer(wg)


# --- the balancer's own bookkeeping (no process: what HTTP cannot show) ---


def _route(*endpoints: str) -> Route:
    return Route(ENV, SERVICE, HOST, "public", "ready", endpoints, (), 1.0, 1, (), (), "1")


def test_two_distinct_endpoints_are_compared_and_counts_of_gone_ones_are_dropped() -> None:
    balancer = LeastOutstanding()
    a, b, c = "127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"
    busy = balancer.take(_route(a, b))
    idle = b if busy == a else a
    # Never the busy one while the other has less in flight: the two drawn are distinct.
    for _ in range(50):
        assert balancer.take(_route(a, b)) == idle
        assert balancer.in_flight == {busy: 1, idle: 1}
        balancer.release(idle)
    # Of three, the busiest never: it could only win against itself.
    for _ in range(50):
        chosen = balancer.take(_route(a, b, c))
        assert chosen != busy
        balancer.release(chosen)
    # A retry goes to another endpoint than the one it broke on, if there is one.
    assert balancer.take_other(_route(a, b), busy) == idle
    balancer.release(idle)
    assert balancer.take_other(_route(a), a) == a
    balancer.release(a)
    # The table moves on to c alone: idle counts of endpoints it no longer lists go, one
    # still in flight stays until its release (and goes with the next table).
    balancer.take(_route(c))
    balancer.forget(RouteTable.build(2, [_route(c)]))
    assert balancer.in_flight == {busy: 1, c: 1}
    balancer.release(busy)
    balancer.forget(RouteTable.build(3, [_route(c)]))
    assert balancer.in_flight == {c: 1}


def test_with_no_load_requests_go_round_the_endpoints() -> None:
    """One request at a time (every count 0): each endpoint gets its turn, as round robin."""
    balancer = LeastOutstanding()
    endpoints = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
    seen = []
    for _ in range(3 * len(endpoints)):
        chosen = balancer.take(_route(*endpoints))
        seen.append(chosen)
        balancer.release(chosen)
    assert sorted(seen) == sorted(endpoints * 3), seen


def test_interleaved_routes_each_go_round_their_own_endpoints() -> None:
    """Requests alternating between two routes (a page calling api, then auth): each route
    still spreads its own, whatever the other does."""
    balancer = LeastOutstanding()
    api = _route("127.0.0.1:1", "127.0.0.1:2")
    auth = dataclasses.replace(_route("127.0.0.1:3", "127.0.0.1:4"), service="auth")
    seen: dict[str, int] = {}
    for _ in range(10):
        for route in (api, auth):
            chosen = balancer.take(route)
            seen[chosen] = seen.get(chosen, 0) + 1
            balancer.release(chosen)
    assert seen == dict.fromkeys(("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3", "127.0.0.1:4"),
                                 5), seen
