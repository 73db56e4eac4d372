"""What the proxy's two paths share, built once by app.Proxy and handed down to them.

The fast path's connections (fastpath.py) and their exchanges (exchange.py),
the aiohttp path (aiohttp_path.py) and the forwarder (forward.py) take what
they need from here, never from the Proxy: none of them imports app.py. The
route table is the one member that changes: the control side swaps it whole
(an immutable snapshot), and the paths read it once per request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from controller.spec import EMPTY_TABLE, ProxySettings, Route, RouteTable

from .activity import ActivityTracker
from .balancer import LeastOutstanding
from .metrics import ProxyMetrics
from .policy import TrustedProxies
from .refusals import RefusedEndpoints
from .request_log import RequestLog
from .upstreams import UpstreamPool


class Connection(Protocol):
    """A fast-path client connection, as the proxy's shutdown sees it."""

    @property
    def busy(self) -> bool: ...
    def close_if_idle(self) -> None: ...
    def abort(self) -> None: ...


@dataclass(slots=True, eq=False)
class ProxyContext:
    settings: ProxySettings
    trusted: TrustedProxies  # peers whose X-Forwarded-* fields are believed
    activity: ActivityTracker  # requests in flight per instance, for the controller
    metrics: ProxyMetrics
    request_log: RequestLog | None
    balancer: LeastOutstanding  # which endpoint a request goes to (both paths count in it)
    upstreams: UpstreamPool  # the fast path's keep-alive upstream connections
    refusals: RefusedEndpoints
    table: RouteTable = EMPTY_TABLE  # this proxy's view of the controller's table
    connections: set[Connection] = field(default_factory=set)  # the fast path's, open

    def current(self, key: tuple[str, str]) -> Route | None:
        """The instance's route in the table as it is now (None: it was removed)."""
        return self.table.by_key.get(key)

    def endpoint_refused(self, route: Route, endpoint: str) -> None:
        """A connect to `endpoint` was refused: no request goes there until it accepts again."""
        self.refusals.refused(route.key, endpoint)

    def request_done(self, route: Route, status: int, seconds: float, method: str | bytes,
                     path: str | bytes, client: str, cold: bool) -> None:
        """Counted in the metrics, and one line in the request log (both paths end here)."""
        self.metrics.of(route.key).request_done(status, seconds)
        if self.request_log is not None:
            self.request_log.write(route, status, seconds, method, path, client, cold)
