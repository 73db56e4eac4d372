"""One line per request: who called which instance, the answer, how long, cold or warm.

Fields: environment, service, method, path (without the query string, which
may carry secrets), status, duration_ms, cold_start, client (the peer's
address). Never a header, a key or a query. Written through the
`wakegate.requests` logger at INFO, so the format (`--log-format json|text`)
is the one of every other line, and `--request-log off` turns it off.
"""

from __future__ import annotations

import logging

from controller.spec import Route

log = logging.getLogger("wakegate.requests")


class RequestLog:
    def write(self, route: Route, status: int, seconds: float, method: str | bytes,
              path: str | bytes, client: str, cold: bool) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        if isinstance(method, bytes):
            method = method.decode("latin-1")
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        duration = round(seconds * 1000, 2)
        log.info("%s %s %s/%s %d %.2fms%s", method, path, route.environment, route.service,
                 status, duration, " cold" if cold else "", extra={"fields": {
                     "environment": route.environment, "service": route.service,
                     "method": method, "path": path, "status": status,
                     "duration_ms": duration, "cold_start": cold, "client": client}})
