"""The controller API's HTTP server: aiohttp's, with requests it cannot parse answered in JSON.

aiohttp answers a malformed request (a bad header byte, two Host headers) in
text/plain with the offending bytes echoed, and logs a traceback at ERROR
with those bytes, which may be an Authorization header. Here such a request
gets a JSON 400 (as every answer of this API), nothing of it is echoed, and
the log has one debug line: it is client input, not wakegate's fault.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from common.json_errors import ErrorAnswer, JsonErrorHandler

log = logging.getLogger("wakegate.api")


class _JsonErrors(JsonErrorHandler):
    def error_answer(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> ErrorAnswer:
        if status >= 500:
            log.error("error handling a controller API request", exc_info=exc)
            return status, "internal_error", "The controller failed on this call; its log says why."
        log.debug("refused a malformed request from %s (%s)", request.remote,
                  type(exc).__name__ if exc is not None else status)
        return status, "bad_request", "The request is not valid HTTP/1.1."


class _JsonErrorsServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JsonErrors(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections answer parse errors with `_JsonErrors`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The Application builds a plain web.Server (aiohttp has no switch for the
        # handler class); this one differs only in the handler it makes.
        server.__class__ = _JsonErrorsServer
        return server
