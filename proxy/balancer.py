"""Which of an instance's ready endpoints a request goes to: least outstanding requests.

Round robin sends the next request to a replica still busy with a slow one.
Instead each request goes to the less loaded of two endpoints drawn at random
(the power of two choices): nearly as good as scanning for the least loaded
one, at a constant cost however many replicas there are, and without the herd
a strict "least loaded" sends to the same replica from every proxy at once.

The load is the requests this proxy has in flight to each endpoint, counted
by both paths: `take` counts one when a request is sent, `release` ends it,
exactly once however the exchange ends (answered, failed, cut, client gone,
handed over, retried elsewhere); a WebSocket counts while it is open. Counts
are per process: each proxy (and worker) balances what it sends.

Endpoints are keyed by their address alone ("host:port": unique among the
replicas of a table). The counts of endpoints that left the route table are
dropped once idle (`forget`), so the dict stays as large as the table.
"""

from __future__ import annotations

from random import random

from controller.spec import Route, RouteTable


class LeastOutstanding:
    __slots__ = ("_turns", "in_flight")

    def __init__(self) -> None:
        self.in_flight: dict[str, int] = {}  # endpoint → requests this proxy has there
        # Per route: whose turn it is to be the first candidate (from a random start, so
        # that proxies and workers do not all begin with the same endpoint).
        self._turns: dict[tuple[str, str], int] = {}

    def take(self, route: Route) -> str:
        """The endpoint for a new request (counted in flight until `release`).

        Two distinct endpoints, the one with fewer in flight. The first is taken in turn,
        the route's own turn, and a tie keeps it, so that requests one at a time go round
        the replicas (as nginx's least_conn breaks its ties) however routes interleave;
        the second is drawn at random, so that under load a busy first candidate meets a
        uniformly chosen rival.
        """
        endpoints = route.endpoints
        counts = self.in_flight
        n = len(endpoints)
        if n == 1:
            chosen = endpoints[0]
            counts[chosen] = counts.get(chosen, 0) + 1
            return chosen
        turns = self._turns
        key = route.key
        turn = turns.get(key)
        turn = int(random() * n) if turn is None else turn + 1
        turns[key] = turn
        i = turn % n
        j = int(random() * (n - 1))
        if j >= i:
            j += 1  # distinct from i, uniform over the others
        chosen = endpoints[i]
        load = counts.get(chosen, 0)
        other = endpoints[j]
        other_load = counts.get(other, 0)
        if other_load < load:
            chosen, load = other, other_load
        counts[chosen] = load + 1
        return chosen

    def take_other(self, route: Route, tried: str) -> str:
        """The endpoint for a retry of a request that broke on `tried` (released first by
        the caller): the least loaded of the others, `tried` only if it is the only one."""
        others = [e for e in route.endpoints if e != tried]
        if not others:
            return self.take(route)
        counts = self.in_flight
        least = min(counts.get(e, 0) for e in others)
        idle = [e for e in others if counts.get(e, 0) == least]
        chosen = idle[int(random() * len(idle))]
        counts[chosen] = least + 1
        return chosen

    def release(self, endpoint: str) -> None:
        """A request `take` counted on `endpoint` is over."""
        self.in_flight[endpoint] -= 1

    def forget(self, table: RouteTable) -> None:
        """Drop the idle counts of endpoints `table` no longer lists (a count still in flight
        stays until its release, and goes with the next table)."""
        counts = self.in_flight
        listed = {e for route in table.by_key.values() for e in route.endpoints}
        for endpoint in [e for e, n in counts.items() if n == 0 and e not in listed]:
            del counts[endpoint]
        turns = self._turns
        for key in [k for k in turns if k not in table.by_key]:
            del turns[key]
