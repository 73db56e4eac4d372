"""aiohttp's connection handler, answering the requests it cannot parse in JSON.

aiohttp answers a malformed request (a bad header byte, two Host headers) in
text/plain with the offending bytes echoed. Both wakegate servers, the
controller API and the proxy, answer every error in JSON instead: a
`{"error": code, "message": text}` body, nothing of the request echoed, and the
connection closed (what follows a request that did not parse is not believed).
Each server says which code and sentence a failure gets (`error_answer`).
"""

from __future__ import annotations

import json

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

# (status, error code, a sentence a person can act on)
ErrorAnswer = tuple[int, str, str]


class JsonErrorHandler(RequestHandler):
    """A RequestHandler whose parse (and internal) errors are answered in JSON."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        status, code, text = self.error_answer(request, status, exc)
        response = web.Response(
            status=status, content_type="application/json",
            body=json.dumps({"error": code, "message": text}).encode() + b"\n")
        response.force_close()
        return response

    def error_answer(
        self, request: web.BaseRequest, status: int, exc: BaseException | None
    ) -> ErrorAnswer:
        """What a request aiohttp failed on (`status`, its exception `exc`) is answered."""
        raise NotImplementedError
