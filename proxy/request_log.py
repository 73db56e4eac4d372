"""One line per request: who called which instance, the answer, how long, cold or warm.

Fields: environment, service, method, path (without the query string, which
may carry secrets), status, duration_ms, cold_start, client (the peer's
address). Never a header, a key or a query. The lines have the layout of
every other log line of the process (`--log-format text|json`, see
controller/logs.py), but are built and written here rather than through the
logging module: at thousands of requests a second its records cost as much
as the forwarding itself. Lines are written in batches, at most 50 ms late,
and flushed when the proxy stops; `--request-log off` turns them off.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import TextIO

from controller.spec import Route

_LOGGER = "wakegate.requests"
_FLUSH_AFTER = 0.05  # seconds
_FLUSH_AT = 64 * 1024  # characters


class RequestLog:
    def __init__(self, fmt: str = "text", worker: int | None = None,
                 stream: TextIO | None = None) -> None:
        self._json = fmt == "json"
        self._stream = stream
        self._tag = f" [worker {worker} pid {os.getpid()}]" if worker is not None else ""
        self._json_tag = f', "worker": {worker}, "pid": {os.getpid()}' if worker is not None \
            else ""
        self._pending: list[str] = []
        self._size = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) if self._json
                           else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
        millis = int(now * 1000) % 1000
        return f"{self._stamp}.{millis:03d}Z" if self._json else f"{self._stamp},{millis:03d}"

    def write(self, route: Route, status: int, seconds: float, method: str | bytes,
              path: str | bytes, client: str, cold: bool) -> None:
        if isinstance(method, bytes):
            method = method.decode("latin-1")
        if isinstance(path, bytes):
            path = path.decode("latin-1")
        if not path.isprintable():
            # A decoded %0a or %1b must not start a forged line or drive a terminal.
            path = path.encode("unicode_escape").decode("ascii")
        stamp = self._time(time.time())
        env, svc = route.environment, route.service
        ms = seconds * 1000
        cold_text = " cold" if cold else ""
        if self._json:
            message = json.dumps(f"{method} {path} {env}/{svc} {status} {ms:.2f}ms{cold_text}")
            line = (f'{{"time": "{stamp}", "level": "info", "logger": "{_LOGGER}", '
                    f'"message": {message}{self._json_tag}, "environment": "{env}", '
                    f'"service": "{svc}", "method": {json.dumps(method)}, '
                    f'"path": {json.dumps(path)}, "status": {status}, '
                    f'"duration_ms": {ms:.2f}, "cold_start": {"true" if cold else "false"}, '
                    f'"client": {json.dumps(client)}}}\n')
        else:
            line = (f"{stamp} INFO {_LOGGER}{self._tag}: {method} {path} {env}/{svc} {status} "
                    f"{ms:.2f}ms{cold_text} client={client}\n")
        self._pending.append(line)
        self._size += len(line)
        if self._size >= _FLUSH_AT:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the event loop: nothing would flush later
                self.flush()
                return
            self._flush_handle = loop.call_later(_FLUSH_AFTER, self.flush)

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        data, self._pending, self._size = "".join(self._pending), [], 0
        stream = self._stream or sys.stderr
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not fail requests
