"""What proxies in other processes call (split mode, and the workers of `up --workers N`):
the route table's watch, activations, activity reports, and the list of reporting proxies."""

from __future__ import annotations

from aiohttp import web

from ..activity_reports import ActivityReports, ActivitySource, RemoteActivity, parse_report
from ..scaler import Scaler
from ..spec import READY
from .answers import BadRequest, error, json_body, json_object, not_leader
from .keys import KeyUses
from .route_feed import Key, RouteFeed

MAX_WAIT = 30.0  # the longest a route-table watch is held open
_INSTANCE_BODY_HINT = 'Send a JSON object: {"environment": ..., "service": ...}.'


class ProxyRoutes:
    def __init__(self, scaler: Scaler, key_uses: KeyUses,
                 local_activity: ActivitySource | None = None) -> None:
        """`local_activity`: a proxy in this process (`wakegate up`), if there is one."""
        self.scaler = scaler
        self.key_uses = key_uses
        self.routes = RouteFeed(scaler)
        self.remote = RemoteActivity(
            ActivityReports(), self._sleep_info, self.routes, local_activity
        )
        # Reports of remote proxies count as activity wherever the scaler looks.
        scaler.add_activity_source(self.remote)

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/routes", self.watch_routes)
        router.add_post("/v1/activate", self.activate)
        router.add_post("/v1/activity", self.activity)
        router.add_get("/v1/proxies", self.proxies)

    def close(self) -> None:
        self.routes.close()

    def _sleep_info(self, key: Key) -> tuple[float, float] | None:
        """(idle_timeout, activity floor) of an instance that is awake and may sleep."""
        inst = self.scaler.instances.get(key)
        if inst is None or inst.state != READY:
            return None
        env = inst.spec.environment
        if not env.sleeps or env.idle_timeout is None:
            return None
        return env.idle_timeout, max(inst.activity_floor, inst.ready_since)

    async def watch_routes(self, request: web.Request) -> web.Response:
        """`GET /v1/routes?epoch=E&version=N&wait=S`: the table now if it is not (E, N), else
        when it changes, within S seconds (at most MAX_WAIT); 304 if it did not."""
        if not self.scaler.acting:
            # A standby's table is empty: a proxy must never apply it.
            return not_leader()
        query = request.query
        epoch = query.get("epoch", "")
        try:
            version = int(query.get("version", "0"))
            wait = float(query.get("wait", "0"))
        except ValueError:
            raise BadRequest("version must be the version of the table you have (0 for none) "
                             "and wait the seconds to wait for a newer one, e.g. "
                             "?epoch=…&version=12&wait=30") from None
        if version < 0 or not 0 <= wait < float("inf"):
            raise BadRequest("version and wait must not be negative.")
        if self.routes.current(epoch, version) and wait > 0:
            await self.routes.changed(min(wait, MAX_WAIT))
        if self.routes.current(epoch, version):
            return web.Response(status=304)
        return web.Response(body=self.routes.body(), content_type="application/json")

    async def activate(self, request: web.Request) -> web.Response:
        """`POST /v1/activate {"environment", "service"}` → 202; the table says how it goes."""
        if not self.scaler.acting:
            return not_leader()
        body = await json_object(request, _INSTANCE_BODY_HINT, ("environment", "service"))
        environment, service = body["environment"], body["service"]
        key = (environment, service)
        inst = self.scaler.route_instance(key)
        if inst is None:
            return error(404, "unknown_instance",
                         f"There is no instance {environment}/{service}.",
                         environment=environment, service=service)
        self.remote.activated(key)
        self.scaler.request_activation(key)
        return web.json_response(
            {"environment": environment, "service": service, "state": inst.state}, status=202
        )

    async def activity(self, request: web.Request) -> web.Response:
        """`POST /v1/activity`: a proxy's report (format in activity_reports.parse_report)."""
        body = await json_body(request, "Send a proxy activity report (see the README).")
        try:
            report = parse_report(body)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        accepted = self.remote.report(report)
        if accepted:
            self.key_uses.reported(report.keys)
        return web.json_response({"accepted": accepted})

    async def proxies(self, request: web.Request) -> web.Response:
        return web.json_response({
            "epoch": self.routes.epoch,
            "version": self.routes.version,
            "proxies": self.remote.reports.proxies(),
        })
