"""`/v1/environments`: list every environment; create, extend and delete ephemeral ones.

The rules are the manager's (controller/ephemeral.py); here a request becomes a call, an
`EnvironmentRefused` becomes the API's error answer, and an environment becomes the JSON
`wakegate env list` shows. Changes answer 503 while the scaler may not act, and a change
repeated with its Idempotency-Key gets the first answer (a create's key included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..ephemeral import EnvironmentRefused, EphemeralManager
from ..ephemeral_checks import config_environments
from ..model import EphemeralRecord
from ..scaler import Scaler
from .answers import error, json_object, not_leader
from .idempotency import IdempotentAnswers

_CREATE_HINT = ('Send a JSON object: {"name": "pr-42", "from": "staging", "ttl": "2h", '
                '"access": "public" or "api_key", "versions": {"service": "version"}}; only '
                'name and from are required.')
_EXTEND_HINT = 'Send a JSON object: {"ttl": "4h"}.'


class EnvironmentRoutes:
    def __init__(self, scaler: Scaler, manager: EphemeralManager,
                 proxy_port: Callable[[], int]) -> None:
        self.scaler = scaler
        self.manager = manager
        self.proxy_port = proxy_port
        self.idempotent = IdempotentAnswers()

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/environments", self.list_environments)
        router.add_post("/v1/environments", self.create)
        router.add_post("/v1/environments/{name}/extend", self.extend)
        router.add_delete("/v1/environments/{name}", self.delete)

    async def list_environments(self, request: web.Request) -> web.Response:
        """`GET /v1/environments`: the config's environments, then the ephemeral ones."""
        now = time.time()
        entries = [self._entry(name, kind, access, None, now)
                   for name, (kind, access) in config_environments(self.scaler).items()]
        entries += [self._entry(r.name, "ephemeral", r.access, r, now)
                    for r in sorted(self.manager.records().values(), key=lambda r: r.name)]
        return web.json_response({"environments": entries})

    async def create(self, request: web.Request) -> web.Response:
        """`POST /v1/environments`: 201 with its URLs (and its key, for api_key access)."""
        body = await json_object(request, _CREATE_HINT, ("name", "from"))
        unknown = sorted(set(body) - {"name", "from", "ttl", "access", "versions"})
        if unknown:
            return error(400, "bad_request", f"Unknown field{'s' if len(unknown) > 1 else ''}"
                         f" {', '.join(map(repr, unknown))}. {_CREATE_HINT}")

        async def create() -> web.Response:
            record, key = await self.manager.create(body)
            answer = {"name": record.name, "kind": "ephemeral", "source": record.source,
                      "access": record.access, "created": int(record.created),
                      "expires": int(record.expires), "urls": self._urls(record)}
            if key is not None:
                answer["key"] = key
            return web.json_response(answer, status=201)

        return await self._change(request, create)

    async def extend(self, request: web.Request) -> web.Response:
        """`POST /v1/environments/{name}/extend {"ttl"}`: it expires that long from now."""
        body = await json_object(request, _EXTEND_HINT)
        if set(body) != {"ttl"}:
            unknown = ", ".join(sorted(set(body) - {"ttl"}))
            return error(400, "bad_request", (f"Unknown field {unknown}. " if unknown else "")
                         + _EXTEND_HINT)
        name = request.match_info["name"]

        async def extend() -> web.Response:
            record = await self.manager.extend(name, body["ttl"])
            return web.json_response(self._entry(record.name, "ephemeral", record.access, record,
                                                 time.time()))

        return await self._change(request, extend)

    async def delete(self, request: web.Request) -> web.Response:
        """`DELETE /v1/environments/{name}`: answered once everything of it is gone."""
        name = request.match_info["name"]

        async def delete() -> web.Response:
            deleted = await self.manager.delete(name)
            return web.json_response({"name": deleted, "deleted": True})

        return await self._change(request, delete)

    async def _change(self, request: web.Request,
                      change: Callable[[], Awaitable[web.Response]]) -> web.Response:
        if not self.scaler.acting:
            return not_leader()

        async def answer() -> web.Response:
            try:
                return await change()
            except EnvironmentRefused as exc:
                return error(exc.status, exc.code, exc.message)

        return await self.idempotent.answer(request, answer)

    def _urls(self, record: EphemeralRecord) -> dict[str, str]:
        port = self.proxy_port()
        shown = "" if port == 80 else f":{port}"
        return {service: f"http://{self.scaler.config.host_of(record.name, service)}{shown}/"
                for service, _ in record.versions}

    def _entry(self, name: str, kind: str, access: str, record: EphemeralRecord | None,
               now: float) -> dict[str, Any]:
        services = {svc: {"state": inst.state, "version": inst.version,
                          "replicas": len(inst.replicas)}
                    for (env, svc), inst in sorted(self.scaler.instances.items()) if env == name}
        return {
            "name": name, "kind": kind,
            "source": record.source if record else None, "access": access,
            "created": int(record.created) if record else None,
            "expires": int(record.expires) if record else None,
            "expires_in": max(math.ceil(record.expires - now), 0) if record else None,
            "services": services,
        }
