"""The proxy's link to a controller in another process, over HTTP (`wakegate proxy`).

Three loops, none of them on the request path:

- the watch: a long poll of `GET /v1/routes` that applies every new table;
- the reports: `POST /v1/activity` every `report_interval`, and right after a
  new table is applied (the controller waits for that before it stops an
  idle instance: see controller/activity_reports.py);
- activations: `activate()` returns at once and `POST /v1/activate` is
  delivered in the background, again and again until it gets through or
  nobody waits for the instance any more.

When the controller cannot be reached the proxy keeps serving with the last
table it had, retries with capped exponential back-off and jitter, and logs
once per outage. A restarted controller numbers its tables from 1 again; its
new epoch tells the link to take them anyway. Tables are renumbered here, so
the proxy only ever sees versions that go up.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import aiohttp

from common.backoff import Backoff
from controller.spec import RouteTable, WireError, table_from_wire

from .activity import ActivityTracker

log = logging.getLogger("wakegate.proxy.link")

Key = tuple[str, str]
WATCH_WAIT = 30.0  # seconds a watch is held open by the controller
TTL_FACTOR = 3  # a report holds for this many report intervals
BACKOFF_FIRST = 0.05  # seconds before the link retries the controller, doubling up to the cap
BACKOFF_CAP = 1.0
_NETWORK_ERRORS = (aiohttp.ClientError, TimeoutError, OSError)


class ControllerRefused(Exception):
    """The controller answered, but not with what was asked for."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class RemoteLink:
    def __init__(
        self,
        controller: str,
        token: Callable[[], str | None] = lambda: None,
        report_interval: float = 1.0,
        watch_wait: float = WATCH_WAIT,
    ) -> None:
        """`token`: reads the controller API's token; asked again after a 401 (the
        controller may have made a new one)."""
        self.url = controller.rstrip("/")
        self.token = token
        self._headers = self._auth()
        self.report_interval = report_interval
        self.ttl = report_interval * TTL_FACTOR
        self._watch_wait = watch_wait
        self.proxy_id = uuid.uuid4().hex
        self._session: aiohttp.ClientSession | None = None
        self._apply: Callable[[RouteTable], None] = lambda table: None
        self._activity = ActivityTracker()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._activating: dict[Key, asyncio.Task[None]] = {}
        self._report_now = asyncio.Event()
        self._seq = 0
        # What the controller sent last: its epoch and its version of the table.
        self.epoch: str | None = None
        self.wire_version = 0
        self._local_version = 0
        # Failure counts per instance, kept growing across controller restarts:
        # a held request fails when the count goes up past what it saw.
        self._failures: dict[Key, int] = {}
        self._failure_base: dict[Key, int] = {}
        self._problem: str | None = None
        self._reported_at = 0.0  # monotonic time the last report taken was made

    # --- ControlLink ---

    async def start(
        self, apply_table: Callable[[RouteTable], None], activity: ActivityTracker
    ) -> None:
        # Never waits for the controller: a proxy starts (and answers /readyz
        # with 503) even while the controller is down.
        self._apply = apply_table
        self._activity = activity
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5.0),
            connector=aiohttp.TCPConnector(limit=0),
        )
        self._spawn(self._watch())
        self._spawn(self._report_loop())

    def activate(self, key: Key) -> None:
        task = self._activating.get(key)
        if task is not None and not task.done():
            return  # already on its way; the controller's activation is idempotent anyway
        task = self._spawn(self._deliver_activation(key))
        self._activating[key] = task
        task.add_done_callback(lambda t: self._activating.pop(key, None)
                               if self._activating.get(key) is t else None)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is None:
            return
        # Tell the controller at once that this proxy's activity is over, so
        # that it need not wait for the last report to expire.
        with contextlib.suppress(*_NETWORK_ERRORS, ControllerRefused):
            await self._send_report(ttl=0.0, timeout=1.0)
        await self._session.close()

    @property
    def connected(self) -> bool:
        """Whether the controller answers: a table came, and no call has failed since."""
        return self.epoch is not None and self._problem is None

    # --- the watch ---

    async def _watch(self) -> None:
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_CAP)
        while True:
            try:
                data = await self._fetch_table()
                if data is not None:
                    self._take(data)
            except asyncio.CancelledError:
                raise
            except (*_NETWORK_ERRORS, ControllerRefused, WireError, ValueError) as exc:
                self._trouble(exc)
                await asyncio.sleep(backoff.next())
                continue
            backoff.reset()
            self._fine()

    async def _fetch_table(self) -> dict[str, Any] | None:
        assert self._session is not None
        wait = self._watch_wait if self.epoch is not None else 0.0
        params = {"epoch": self.epoch or "", "version": str(self.wire_version),
                  "wait": f"{wait:g}"}
        timeout = aiohttp.ClientTimeout(total=wait + 10.0, sock_connect=5.0)
        async with self._session.get(self.url + "/v1/routes", params=params,
                                     headers=self._headers, timeout=timeout) as resp:
            if resp.status == 304:
                return None
            if resp.status != 200:
                raise ControllerRefused(resp.status, await _message(resp))
            data = await resp.json(content_type=None)
        if not isinstance(data, dict):
            raise WireError("the route table is not a JSON object")
        return data

    def _take(self, data: dict[str, Any]) -> None:
        epoch, version, now = data.get("epoch"), data.get("version"), data.get("now")
        if (not isinstance(epoch, str) or not isinstance(version, int)
                or not isinstance(now, int | float)):
            raise WireError("the route table lacks epoch, version or now")
        if epoch == self.epoch and version <= self.wire_version:
            return  # not newer than what this proxy has
        table = table_from_wire(self._local_version + 1, data.get("routes"),
                                clock_shift=time.monotonic() - now)
        if epoch != self.epoch:
            if self.epoch is not None:
                log.info("a new controller is in charge: taking its route table (version %d)",
                         version)
            self._failure_base = dict(self._failures)
        table = self._with_lasting_failures(table)
        self._local_version += 1
        new_controller = self.epoch is not None and epoch != self.epoch
        self.epoch, self.wire_version = epoch, version
        self._apply(table)
        if new_controller:
            # The old controller may have died between taking an activation and
            # finishing it; the new one knows nothing of it. Ask again for every
            # instance requests are held for.
            for key, route in table.by_key.items():
                act = self._activity.instances.get(key)
                if act is not None and act.in_flight > 0 and not route.endpoints:
                    self.activate(key)
        self._report_now.set()  # the controller may be waiting to hear that it arrived

    def _with_lasting_failures(self, table: RouteTable) -> RouteTable:
        routes = []
        for route in table.by_key.values():
            base = self._failure_base.get(route.key, 0)
            if base:
                route = dataclasses.replace(route, failures=route.failures + base)
            self._failures[route.key] = route.failures
            routes.append(route)
        return RouteTable.build(table.version, routes) if self._failure_base else table

    # --- activity reports ---

    async def _report_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._report_now.wait(), self.report_interval)
            self._report_now.clear()
            try:
                await self._send_report(self.ttl, timeout=self.ttl)
            except asyncio.CancelledError:
                raise
            except (*_NETWORK_ERRORS, ControllerRefused) as exc:
                self._trouble(exc)
            else:
                self._fine()

    def report_body(self, ttl: float) -> dict[str, Any]:
        now = time.monotonic()
        instances = []
        for (environment, service), act in self._activity.instances.items():
            # Seconds since the last end, never a clock reading: clocks differ.
            idle = round(max(now - act.last_end, 0.0), 4) if act.last_end else None
            if act.in_flight or idle is not None:
                instances.append({"environment": environment, "service": service,
                                  "in_flight": max(act.in_flight, 0), "idle_seconds": idle})
        self._seq += 1
        table = None if self.epoch is None else {"epoch": self.epoch,
                                                  "version": self.wire_version}
        # When each API key was last accepted here, for `wakegate keys list`: the
        # keys used since the last report the controller took (it keeps the rest).
        since = self._reported_at
        keys = [{"id": ident, "idle_seconds": round(max(now - at, 0.0), 3)}
                for ident, at in self._activity.keys.items() if at >= since]
        return {"proxy": self.proxy_id, "seq": self._seq, "ttl": ttl, "table": table,
                "instances": instances, "keys": keys}

    async def _send_report(self, ttl: float, timeout: float) -> None:
        assert self._session is not None
        made = time.monotonic()
        body = self.report_body(ttl)
        async with self._session.post(self.url + "/v1/activity", json=body,
                                      headers=self._headers,
                                      timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            if resp.status != 200:
                raise ControllerRefused(resp.status, await _message(resp))
            await resp.read()
        self._reported_at = made

    # --- activations ---

    async def _deliver_activation(self, key: Key) -> None:
        assert self._session is not None
        backoff = Backoff(BACKOFF_FIRST, BACKOFF_CAP)
        body = {"environment": key[0], "service": key[1]}
        while True:
            try:
                async with self._session.post(
                    self.url + "/v1/activate", json=body, headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=5.0),
                ) as resp:
                    if resp.status in (200, 202):
                        await resp.read()
                        self._fine()
                        return
                    if resp.status == 404:
                        # Gone from the controller; its next table says so to the holds.
                        log.warning("the controller does not know %s/%s", *key)
                        return
                    raise ControllerRefused(resp.status, await _message(resp))
            except asyncio.CancelledError:
                raise
            except (*_NETWORK_ERRORS, ControllerRefused) as exc:
                self._trouble(exc)
            act = self._activity.instances.get(key)
            if act is None or act.in_flight <= 0:
                return  # nobody is held for it any more
            await asyncio.sleep(backoff.next())

    # --- housekeeping ---

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _auth(self) -> dict[str, str]:
        token = self.token()
        return {"Authorization": f"Bearer {token}"} if token else {}

    def _trouble(self, exc: BaseException) -> None:
        """Log a problem with the controller once per outage, not once per retry."""
        if isinstance(exc, ControllerRefused) and exc.status == 401:
            self._headers = self._auth()  # read the token again for the next try
        if self._problem is not None:
            return
        if isinstance(exc, ControllerRefused) and exc.status == 401:
            problem = ("the controller refused this proxy's token: give the proxy the "
                       "controller's config with -c (it reads state_dir/api-token), or its "
                       "WAKEGATE_TOKEN")
        elif isinstance(exc, ControllerRefused | WireError | ValueError):
            problem = f"the controller sent an answer this proxy cannot use ({exc})"
        else:
            problem = f"cannot reach the controller ({type(exc).__name__}: {exc})"
        self._problem = problem
        log.warning("%s at %s; serving with the last route table (version %d) and retrying",
                    problem, self.url, self._local_version)

    def _fine(self) -> None:
        if self._problem is not None:
            self._problem = None
            log.info("the controller at %s answers again", self.url)


async def _message(resp: aiohttp.ClientResponse) -> str:
    """The `message` of a JSON error body, or the reason phrase."""
    try:
        body = json.loads(await resp.read())
        return str(body.get("message") or body.get("error") or resp.reason)
    except (ValueError, AttributeError, aiohttp.ClientError):
        return str(resp.reason)
