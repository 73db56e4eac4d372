"""ControllerAPI: the aiohttp application of the controller's API. It puts the route groups
together (proxies, keys, changes, environments), refuses what the guard refuses, answers
every error in JSON, and serves health, readiness, metrics and status itself."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from ..activity_reports import ActivitySource
from ..ephemeral import EphemeralManager
from ..scaler import Scaler
from .answers import BadRequest, Handler, error, not_leader
from .changes import ChangeRoutes
from .environments import EnvironmentRoutes
from .guard import ApiGuard
from .keys import KeyRoutes, KeyUses
from .proxies import ProxyRoutes

log = logging.getLogger("wakegate.api")


class ControllerAPI:
    def __init__(
        self,
        scaler: Scaler,
        registry: CollectorRegistry,
        proxy_port: Callable[[], int],
        guard: ApiGuard,
        config_path: str,
        ephemeral: EphemeralManager,
        local_activity: ActivitySource | None = None,
        local_key_uses: Callable[[], dict[str, float]] | None = None,
    ) -> None:
        """`local_activity`, `local_key_uses`: a proxy in this process (`wakegate up`), if
        there is one (its activity, and when it last accepted each API key).

        `config_path`: the file `apply` re-reads (the one the controller started with).
        `ephemeral`: the ephemeral environments (/v1/environments).
        """
        self.scaler = scaler
        self.registry = registry
        self.proxy_port = proxy_port
        self.guard = guard
        key_uses = KeyUses(local_key_uses)
        self.proxies = ProxyRoutes(scaler, key_uses, local_activity)
        self.keys = KeyRoutes(scaler, key_uses)
        self.changes = ChangeRoutes(scaler, config_path)
        self.environments = EnvironmentRoutes(scaler, ephemeral, proxy_port)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._errors_and_auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/status", self.status)
        for group in (self.keys, self.changes, self.environments, self.proxies):
            group.add_to(app.router)
        return app

    def close(self) -> None:
        self.proxies.close()

    @web.middleware
    async def _errors_and_auth(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if request.path.startswith("/v1/"):
            refusal = self.guard.refusal(request)
            if refusal is not None:
                return refusal
        try:
            return await handler(request)
        except BadRequest as exc:
            return error(400, "bad_request", str(exc))
        except web.HTTPException as exc:
            if exc.status == 404:
                return error(404, "not_found", f"There is no {request.path} in this API.")
            if exc.status == 405:
                return error(405, "method_not_allowed",
                             f"{request.path} does not take {request.method}.")
            if exc.status == 413:
                return error(413, "body_too_large", "The request body is too large.")
            return error(exc.status, "bad_request", exc.reason)
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("error in %s %s", request.method, request.path)
            return error(500, "internal_error", "The controller failed on this call; "
                         "its log says why.")

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        # Ready only once it acts (Kubernetes: holds the Lease), so that a
        # Service sends proxies to the leader and never to a standby.
        if not self.scaler.acting:
            return not_leader()
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"instances": self.scaler.status(self.proxy_port())})
