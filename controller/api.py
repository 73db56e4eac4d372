"""The controller's HTTP API: status, keys, health and metrics.

It listens on loopback unless given a token; mutating calls then need
`Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from .scaler import Scaler

_KEYS_BODY_HINT = 'Send a JSON object: {"service": ..., "environment": ...}.'
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, code: str, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": code, "message": message, **extra}, status=status)


class ControllerAPI:
    def __init__(
        self,
        scaler: Scaler,
        registry: CollectorRegistry,
        proxy_port: Callable[[], int],
        token: str | None,
    ) -> None:
        self.scaler = scaler
        self.registry = registry
        self.proxy_port = proxy_port
        self.token = token

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.healthz)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/v1/status", self.status)
        app.router.add_post("/v1/keys", self.create_key)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self.token and request.method not in ("GET", "HEAD"):
            sent = request.headers.get("Authorization", "")
            expected = f"Bearer {self.token}"
            if not hmac.compare_digest(sent.encode(), expected.encode()):
                return _error(401, "unauthorized",
                              "This call needs `Authorization: Bearer <token>` "
                              "(the controller's WAKEGATE_TOKEN).")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return _error(exc.status, "not_found" if exc.status == 404 else "bad_request",
                          exc.reason)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response({"instances": self.scaler.status(self.proxy_port())})

    async def create_key(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "bad_request", _KEYS_BODY_HINT)
        if not isinstance(body, dict):
            return _error(400, "bad_request", _KEYS_BODY_HINT)
        service = body.get("service")
        environment = body.get("environment", "private")
        if not isinstance(service, str) or not isinstance(environment, str):
            return _error(400, "bad_request", "service and environment must be strings.")
        config = self.scaler.config
        if service not in config.services:
            return _error(404, "unknown_service",
                          f"There is no service {service!r}; known: "
                          f"{', '.join(config.services) or 'none'}.", service=service)
        if environment not in config.environments:
            return _error(404, "unknown_environment",
                          f"There is no environment {environment!r}; known: "
                          f"{', '.join(config.environments)}.", environment=environment)
        inst = self.scaler.instances.get((environment, service))
        if inst is None:
            return _error(404, "unknown_instance",
                          f"{service} does not run in {environment}; it runs in "
                          f"{', '.join(config.services[service].environments)}.",
                          environment=environment, service=service)
        if inst.spec.environment.access != "api_key":
            return _error(400, "public_instance",
                          f"{environment}/{service} is public: it does not check API keys.",
                          environment=environment, service=service)
        key = self.scaler.keys.create(environment, service)
        self.scaler.keys_changed(inst.key)
        return web.json_response(
            {"environment": environment, "service": service, "key": key}, status=201
        )
