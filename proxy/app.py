"""The data plane: route by Host → check access → forward, or hold while the instance wakes.

The Proxy is the data plane's composition: it builds what its two paths share
(context.py), the fast path for simple requests (fastpath.py) and the aiohttp
path for the rest (aiohttp_path.py, on the server of server.py), takes route
tables from its link to the controller, and starts and stops them all. The
hot path reads the current route table (an immutable snapshot swapped
atomically), never awaits the controller and takes no lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

from aiohttp import web
from prometheus_client import CollectorRegistry

from controller.spec import EMPTY_TABLE, ProxySettings, RouteTable

from . import policy
from .activator import Activator
from .activity import ActivityTracker
from .aiohttp_path import AiohttpPath
from .balancer import LeastOutstanding
from .context import ProxyContext
from .fastpath import FastConnection
from .forward import Forwarder
from .link import ControlLink
from .metrics import ProxyMetrics
from .policy import TrustedProxies
from .refusals import RefusedEndpoints
from .request_log import RequestLog
from .server import ProxyWebServer
from .upstreams import UpstreamPool


class Proxy:
    def __init__(
        self, settings: ProxySettings, link: ControlLink, registry: CollectorRegistry,
        request_log: RequestLog | None = None,
    ) -> None:
        self.settings = settings
        self.link = link
        self.registry = registry
        # What the controller sent; this proxy's view of it (context.table) is the
        # same table without the endpoints seen refusing connections (refusals.py).
        self._given: RouteTable = EMPTY_TABLE
        self._routed: set[tuple[str, str]] = set()  # the keys of the last table applied
        # `connected`: split mode's link knows whether the controller answers.
        refusals = RefusedEndpoints(self._apply_view, settings.connect_timeout,
                                    lambda: bool(getattr(link, "connected", True)))
        self.activity = ActivityTracker()
        metrics = ProxyMetrics(self._in_flight_counts, self._held_counts)
        registry.register(metrics)
        self.context = ProxyContext(
            settings=settings, trusted=TrustedProxies(settings.trusted_proxies),
            activity=self.activity, metrics=metrics, request_log=request_log,
            balancer=LeastOutstanding(), upstreams=UpstreamPool(settings.connect_timeout),
            refusals=refusals)
        self.activator = Activator(link, metrics)
        self.forwarder = Forwarder(self.context)
        self._aiohttp_path = AiohttpPath(self.context, self.activator, self.forwarder,
                                         link.activate, registry)
        # The warm path for simple requests (fastpath.py); WAKEGATE_FAST_PATH=0
        # sends every request through aiohttp, to compare or to rule it out.
        self.fast_path = os.environ.get("WAKEGATE_FAST_PATH", "1") != "0"
        connected = getattr(link, "connected", None)
        if connected is not None:
            # Split mode: wakegate_controller_connected on this proxy's /metrics.
            metrics.controller_connected = lambda: bool(link.connected)  # type: ignore[attr-defined]
        self._runner: web.ServerRunner | None = None
        self._listener: asyncio.AbstractServer | None = None
        self.port: int | None = None

    @property
    def table(self) -> RouteTable:
        """The route table requests are served from."""
        return self.context.table

    # --- the control side ---

    def apply_table(self, table: RouteTable) -> None:
        if table.version < self._given.version:
            return  # a late, older table never replaces a newer one
        self._given = table
        self._apply_view()

    def _apply_view(self) -> None:
        context = self.context
        table = context.table = context.refusals.view(self._given)
        context.balancer.forget(table)
        if table.by_key.keys() != self._routed:  # (compared in C: cheap at 10,000 routes)
            # A route left (or came): its series and counts go with it.
            self._routed = set(table.by_key)
            context.metrics.forget_all_but(self._routed)
            context.activity.forget_all_but(self._routed)
        self.activator.on_table(table)

    def _in_flight_counts(self) -> dict[tuple[str, str], int]:
        return {k: a.in_flight for k, a in self.activity.instances.items()}

    def _held_counts(self) -> dict[tuple[str, str], int]:
        return self.activator.held_counts()

    # --- starting and stopping ---

    async def start(self, host: str, port: int, reuse_port: bool = False) -> int:
        await self.forwarder.start()
        await self.link.start(self.apply_table, self.activity)
        settings = self.settings
        server = ProxyWebServer(
            self._aiohttp_path.handle,
            handler_cancellation=True,  # a held client that leaves is removed at once
            max_line_size=settings.max_header_size,
            max_field_size=settings.max_header_size,
            max_headers=policy.MAX_FIELDS,  # the fast path hands more to this parser
            access_log=None,
            # aiohttp's own idle timer closes an idle keep-alive connection; the
            # header timeout (with its 408) is ProxyRequestHandler's.
            keepalive_timeout=settings.keepalive_timeout,
            header_timeout=settings.header_timeout,
        )
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=2.0)
        await self._runner.setup()
        slow = self._runner.server
        assert slow is not None
        context = self.context
        factory = (lambda: FastConnection(context, slow)) if self.fast_path else slow
        self._listener = await asyncio.get_running_loop().create_server(
            factory, host, port, reuse_port=reuse_port or None, backlog=4096)
        sockets = self._listener.sockets or []
        self.port = sockets[0].getsockname()[1] if sockets else port
        return self.port

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        # Idle fast-path connections close now; one with a request in flight
        # closes when it is answered, or at the aiohttp path's deadline.
        connections = self.context.connections
        for conn in list(connections):
            conn.close_if_idle()
        deadline = time.monotonic() + 2.0
        while any(c.busy for c in connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        for conn in list(connections):
            conn.abort()
        if self._runner is not None:
            await self._runner.cleanup()
        self.context.upstreams.close()
        self.context.refusals.close()
        if self.context.request_log is not None:
            self.context.request_log.flush()
        await self.link.close()
        await self.forwarder.close()
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.wait_closed()
