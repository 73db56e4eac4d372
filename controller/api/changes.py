"""The calls that change what runs: deploy, promote, release promote/rollback, apply; and
the release status. A change repeated with its Idempotency-Key gets the first answer."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ..config import parse_version
from ..keys import SHA256_HEX
from ..releases import DeployRefused, ReleaseConflict, ReleaseRefused
from ..runtimes.base import StartFailed
from ..scaler import Scaler
from .answers import BadRequest, error, json_body, json_object, not_leader
from .apply import apply_file
from .idempotency import IdempotentAnswers

Change = Callable[[], Awaitable[dict[str, Any]]]


class ChangeRoutes:
    def __init__(self, scaler: Scaler, config_path: str) -> None:
        """`config_path`: the file `apply` re-reads (the one the controller started with)."""
        self.scaler = scaler
        self.config_path = config_path
        self.idempotent = IdempotentAnswers()

    def add_to(self, router: web.UrlDispatcher) -> None:
        router.add_post("/v1/deploy", self.deploy)
        router.add_post("/v1/promote", self.promote)
        router.add_post("/v1/apply", self.apply)
        router.add_post("/v1/release/{action:promote|rollback}", self.release)
        router.add_get("/v1/release/status", self.release_status)

    async def deploy(self, request: web.Request) -> web.Response:
        """`POST /v1/deploy {"service", "environment", "version"}`: run that version there."""
        body = await json_object(
            request, 'Send a JSON object: {"service": ..., "environment": ..., "version": ...}.',
            ("service", "environment"))
        service, environment = body["service"], body["environment"]
        try:
            version = parse_version(body.get("version"))
        except ValueError as exc:
            return error(400, "bad_version", f"version: {exc}. Nothing was changed.")
        if not self.scaler.acting:
            return not_leader()
        releases = self.scaler.releases
        return await self._versions(request,
                                    lambda: releases.deploy(environment, service, version))

    async def promote(self, request: web.Request) -> web.Response:
        """`POST /v1/promote {"service"}`: the private version becomes the demo version."""
        service = await _service(request)
        if not self.scaler.acting:
            return not_leader()
        return await self._versions(request, lambda: self.scaler.releases.promote_private(service))

    async def apply(self, request: web.Request) -> web.Response:
        """`POST /v1/apply {"sha256": HEX?}`: re-read the controller's own config file and
        reconcile with it, all or nothing.

        Never a path the caller names: whoever may call the API must not make the
        controller read (and run the commands of) any file it likes.
        """
        hint = ('Send a JSON object: {} or {"sha256": "<hex digest of the file you '
                'checked>"}; the controller re-reads its own config file.')
        body = await json_body(request, hint) if request.body_exists else {}
        if not isinstance(body, dict) or set(body) - {"sha256"}:
            if isinstance(body, dict) and "config" in body:
                raise BadRequest("apply takes no path: the controller re-reads its own config "
                                 f"file ({self.config_path}). {hint}")
            raise BadRequest(hint)
        digest = body.get("sha256")
        if digest is not None and (not isinstance(digest, str)
                                   or not SHA256_HEX.fullmatch(digest)):
            raise BadRequest(f"sha256 must be 64 lowercase hex digits. {hint}")
        return apply_file(self.scaler, self.config_path, digest)

    async def release(self, request: web.Request) -> web.Response:
        """`POST /v1/release/promote|rollback {"service"}`: switch production's colours."""
        service = await _service(request)
        if not self.scaler.acting:
            return not_leader()
        action = request.match_info["action"]

        async def switch() -> dict[str, Any]:
            inst = self.scaler.releases.production_instance(service)
            releases = self.scaler.releases
            return await (releases.promote(inst) if action == "promote"
                          else releases.rollback(inst))

        return await self._versions(request, switch)

    async def release_status(self, request: web.Request) -> web.Response:
        """`GET /v1/release/status?service=S`: both colours, which is live."""
        service = request.query.get("service", "")
        try:
            inst = self.scaler.releases.production_instance(service)
        except LookupError as exc:
            return error(404, "not_found", f"{exc}.")
        except ReleaseRefused as exc:
            return error(409, "refused", f"{exc}.")
        return web.json_response(self.scaler.releases.status(inst))

    async def _versions(self, request: web.Request, change: Change) -> web.Response:
        """A change's answer; the same answer again for a repeat with its Idempotency-Key."""
        return await self.idempotent.answer(request, lambda: _change(change))


async def _service(request: web.Request) -> str:
    """The `service` of a body that names only one."""
    body = await json_object(request, 'Send a JSON object: {"service": "..."}.', ("service",))
    return str(body["service"])


async def _change(change: Change) -> web.Response:
    try:
        result = await change()
    except LookupError as exc:
        return error(404, "not_found", f"{exc}. `wakegate status` lists the instances.")
    except (DeployRefused, ReleaseRefused) as exc:
        return error(409, "refused", f"{exc}. Nothing was changed.")
    except ReleaseConflict as exc:
        return error(409, "conflict", f"{exc}. Nothing was changed.")
    except StartFailed as exc:
        return error(502, "start_failed",
                     f"the new version did not start ({exc}); the old one keeps serving.")
    return web.json_response(result)
