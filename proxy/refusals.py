"""Endpoints that refused a connection, taken out of this proxy's view of the route table.

The route table says which endpoints the controller believes ready, but the
controller can be wrong for a while, or gone: in split mode a controller that
dies takes its local replicas with it, and until a new controller publishes a
new table the proxies still hold the dead endpoints. A refused connect proves
that nothing listens there, and nothing of the request reached anyone, so:

- the endpoint is taken out of this proxy's table at once: no later request
  is sent to it (the fast path included, which reads the same table);
- an instance left without endpoints shows as sleeping, so its requests are
  held and its activation asked for, as for any sleeping instance, instead of
  being answered 502;
- the endpoint comes back when a TCP probe of it succeeds (a replica that
  was only slow to listen), and the mark is dropped when the controller's
  table no longer lists that endpoint (the controller replaced the replica).

The probes only ever connect to endpoints the controller's table lists, and
only bring one back while that controller answers: a table from a controller
that died may name a port that another instance's new replica has taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from types import MappingProxyType

from controller.spec import EMPTY_TABLE, READY, SLEEPING, RouteTable

log = logging.getLogger("wakegate.proxy")

Key = tuple[str, str]
PROBE_FIRST = 0.01  # seconds before the first probe: a replica that is just slow to listen
PROBE_MAX = 1.0


class RefusedEndpoints:
    """The marks, their probes, and the view of a table without the marked endpoints."""

    def __init__(self, changed: Callable[[], None], connect_timeout: float,
                 trusted: Callable[[], bool] = lambda: True) -> None:
        """`trusted`: whether the table comes from a controller that answers now."""
        self._changed = changed
        self._connect_timeout = connect_timeout
        self._trusted = trusted
        self._marks: dict[Key, dict[str, asyncio.Task[None]]] = {}
        self._table = EMPTY_TABLE  # the controller's, as last seen

    def refused(self, key: Key, endpoint: str) -> None:
        """`endpoint` of instance `key` refused a connection: out of the table until it accepts."""
        route = self._table.by_key.get(key)
        if route is None or endpoint not in route.endpoints:
            return  # not (or no longer) the controller's
        marks = self._marks.setdefault(key, {})
        if endpoint in marks:
            return
        log.warning("%s/%s: %s refused a connection; routing around it until it accepts "
                    "again or the controller replaces it", *key, endpoint)
        marks[endpoint] = asyncio.ensure_future(self._probe(key, endpoint))
        self._changed()

    def view(self, table: RouteTable) -> RouteTable:
        """`table` without the marked endpoints; marks of endpoints it no longer lists go."""
        self._table = table
        for key in list(self._marks):
            marks = self._marks[key]
            route = table.by_key.get(key)
            listed = route.endpoints if route is not None else ()
            for endpoint in [e for e in marks if e not in listed]:
                marks.pop(endpoint).cancel()
            if not marks:
                del self._marks[key]
        if not self._marks:
            return table
        by_key = dict(table.by_key)
        by_host = dict(table.by_host)
        for key, marks in self._marks.items():
            route = by_key[key]
            live = tuple(e for e in route.endpoints if e not in marks)
            # Without endpoints it is as good as asleep: requests are held and
            # the activation is asked for again (activator.on_table).
            state = route.state if live or route.state != READY else SLEEPING
            changed = dataclasses.replace(route, endpoints=live, state=state)
            by_key[key] = changed
            by_host[route.host] = changed
        return RouteTable(table.version, MappingProxyType(by_host), MappingProxyType(by_key))

    async def _probe(self, key: Key, endpoint: str) -> None:
        delay = PROBE_FIRST
        while True:
            await asyncio.sleep(delay)
            delay = min(delay * 2, PROBE_MAX)
            # Only while the controller answers: with a table that may be stale (its
            # controller died and took the replicas along) the port may already be
            # another instance's new replica's. Its next table says what is where.
            if self._trusted() and await accepts(endpoint, self._connect_timeout):
                break
        marks = self._marks.get(key)
        if marks is not None and marks.get(endpoint) is asyncio.current_task():
            del marks[endpoint]
            if not marks:
                del self._marks[key]
            log.info("%s/%s: %s accepts connections again", *key, endpoint)
            self._changed()

    def close(self) -> None:
        for marks in self._marks.values():
            for task in marks.values():
                task.cancel()
        self._marks.clear()


async def accepts(endpoint: str, timeout: float) -> bool:
    """Whether something accepts a TCP connection at `endpoint` ("host:port"); nothing is sent."""
    host, _, port = endpoint.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host.strip("[]"), int(port)), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
