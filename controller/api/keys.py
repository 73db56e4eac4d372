"""`/v1/keys`: make, list and revoke the API keys of private instances, and when each key
was last used on any proxy."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from ..scaler import Scaler
from ..spec import KEY_ID
from .answers import BadRequest, error, json_object

log = logging.getLogger("wakegate.api")


class KeyUses:
    """When each key (by id) was last accepted, as Unix times: by a proxy in this process
    (`local`, if there is one), and by the proxies that report (`reported`)."""

    def __init__(self, local: Callable[[], dict[str, float]] | None = None) -> None:
        self._local = local
        self._remote: dict[str, float] = {}

    def reported(self, idle_seconds: Mapping[str, float]) -> None:
        """A report's keys: seconds since each one was last used."""
        now = time.time()
        for ident, idle in idle_seconds.items():
            at = now - idle
            if at > self._remote.get(ident, 0.0):
                self._remote[ident] = at

    def last_used(self) -> dict[str, float]:
        uses = dict(self._remote)
        if self._local is not None:
            for ident, at in self._local().items():
                uses[ident] = max(uses.get(ident, 0.0), at)
        return uses


class KeyRoutes:
    def __init__(self, scaler: Scaler, uses: KeyUses) -> None:
        self.scaler = scaler
        self.uses = uses

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/keys", self.create_key)
        router.add_get("/v1/keys", self.list_keys)
        router.add_delete("/v1/keys/{id}", self.revoke_key)

    async def list_keys(self, request: web.Request) -> web.Response:
        """`GET /v1/keys[?service=S]`: every key's id, instance, creation and last use."""
        service = request.query.get("service")
        if service is not None and service not in {svc for _, svc in self.scaler.instances}:
            return error(404, "unknown_service", f"There is no service {service!r}.",
                         service=service)
        keys = self.scaler.keys
        keys.note_used(self.uses.last_used())
        rows = [dataclasses.asdict(info) for info in keys.list()
                if service is None or info.service == service]
        rows.sort(key=lambda row: (row["environment"], row["service"], row["created"]))
        return web.json_response({"keys": rows})

    async def revoke_key(self, request: web.Request) -> web.Response:
        """`DELETE /v1/keys/{id}`: the key stops working on every proxy at once."""
        ident = request.match_info["id"]
        if not KEY_ID.fullmatch(ident):
            raise BadRequest("A key id is 12 lowercase hex digits, as `wakegate keys list` "
                             "shows them.")
        found = await self.scaler.revoke_key(ident)
        if found is None:
            return error(404, "unknown_key", f"There is no key {ident}; `wakegate keys list` "
                         "shows the ids.")
        log.info("revoked API key %s of %s/%s", ident, *found)
        return web.json_response({"id": ident, "environment": found[0], "service": found[1],
                                  "revoked": True})

    async def create_key(self, request: web.Request) -> web.Response:
        """`POST /v1/keys {"service", "environment"?}`: a new key, shown in this answer only."""
        body = await json_object(request, 'Send a JSON object: {"service": ..., "environment": '
                                 '...}.', ("service", "environment"), {"environment": "private"})
        service, environment = body["service"], body["environment"]
        # The instances, not the config: a runtime may find services elsewhere
        # (Kubernetes: in the cluster).
        keys = list(self.scaler.instances)
        services = sorted({svc for _, svc in keys})
        environments = sorted({env for env, _ in keys} | set(self.scaler.config.environments))
        if service not in services:
            return error(404, "unknown_service",
                         f"There is no service {service!r}; known: "
                         f"{', '.join(services) or 'none'}.", service=service)
        if environment not in environments:
            return error(404, "unknown_environment",
                         f"There is no environment {environment!r}; known: "
                         f"{', '.join(environments)}.", environment=environment)
        inst = self.scaler.instances.get((environment, service))
        if inst is None:
            runs_in = sorted(env for env, svc in keys if svc == service)
            return error(404, "unknown_instance",
                         f"{service} does not run in {environment}; it runs in "
                         f"{', '.join(runs_in)}.", environment=environment, service=service)
        if inst.spec.environment.access != "api_key":
            return error(400, "public_instance",
                         f"{environment}/{service} is public: it does not check API keys.",
                         environment=environment, service=service)
        key = await self.scaler.create_key(environment, service)
        return web.json_response(
            {"environment": environment, "service": service, "key": key}, status=201
        )
