"""One line per request: who called which instance, the answer, how long, cold or warm.

Fields: environment, service, method, path (without the query string, which
may carry secrets), status, duration_ms, cold_start, client (the peer's
address). Never a header, a key or a query. The lines have the layout of
every other log line of the process (`--log-format text|json`, see
controller/cli/logs.py), but are built and written here rather than through the
logging module: at thousands of requests a second its records cost as much
as the forwarding itself. The hot path only appends a tuple; lines are
formatted and written in batches, at most 50 ms (or 1024 lines) late, and
flushed when the proxy stops; `--request-log off` turns them off.
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
_FLUSH_AT = 1024  # lines

# One request, as the hot path records it: (time.time(), environment, service, status,
# seconds, method, path, client, cold). Formatted only in flush(), in batches. Only
# atoms (no Route): the garbage collector stops tracking such a tuple at once, so a
# batch waiting to be written never makes the older generations grow.
_Entry = tuple[float, str, str, int, float, "str | bytes", "str | bytes", str, bool]


def _text(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if not value.isprintable():
        # A decoded %0a or %1b must not start a forged line or drive a terminal.
        value = value.encode("unicode_escape").decode("ascii")
    return value


class RequestLog:
    def __init__(self, fmt: str = "text", worker: int | None = None,
                 stream: TextIO | None = None) -> None:
        self._json = fmt == "json"
        self._stream = stream
        self._tag = f" [worker {worker} pid {os.getpid()}]" if worker is not None else ""
        self._json_tag = f', "worker": {worker}, "pid": {os.getpid()}' if worker is not None \
            else ""
        self._pending: list[_Entry] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""
        self._millis = -1
        self._millis_stamp = ""

    def write(self, route: Route, status: int, seconds: float, method: str | bytes,
              path: str | bytes, client: str, cold: bool) -> None:
        """Record one request: a tuple now, a line at the next flush (the hot path pays
        for the append only)."""
        self._pending.append((time.time(), route.environment, route.service, status, seconds,
                              method, path, client, cold))
        if len(self._pending) >= _FLUSH_AT:
            self.flush()
        elif self._flush_handle is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # not on the event loop: nothing would flush later
                self.flush()
                return
            self._flush_handle = loop.call_later(_FLUSH_AFTER, self.flush)

    def _time(self, now: float) -> str:
        millis = int(now * 1000)
        if millis == self._millis:
            return self._millis_stamp  # a batch holds many requests of one millisecond
        second = millis // 1000
        if second != self._second:
            self._second = second
            self._stamp = (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) if self._json
                           else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)))
        self._millis = millis
        self._millis_stamp = (f"{self._stamp}.{millis % 1000:03d}Z" if self._json
                              else f"{self._stamp},{millis % 1000:03d}")
        return self._millis_stamp

    def _line(self, entry: _Entry) -> str:
        now, env, svc, status, seconds, method, path, client, cold = entry
        method, path = _text(method), _text(path)
        stamp = self._time(now)
        ms = seconds * 1000
        cold_text = " cold" if cold else ""
        if self._json:
            message = json.dumps(f"{method} {path} {env}/{svc} {status} {ms:.2f}ms{cold_text}")
            return (f'{{"time": "{stamp}", "level": "info", "logger": "{_LOGGER}", '
                    f'"message": {message}{self._json_tag}, "environment": "{env}", '
                    f'"service": "{svc}", "method": {json.dumps(method)}, '
                    f'"path": {json.dumps(path)}, "status": {status}, '
                    f'"duration_ms": {ms:.2f}, "cold_start": {"true" if cold else "false"}, '
                    f'"client": {json.dumps(client)}}}\n')
        return (f"{stamp} INFO {_LOGGER}{self._tag}: {method} {path} {env}/{svc} {status} "
                f"{ms:.2f}ms{cold_text} client={client}\n")

    def flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        data = "".join([self._line(entry) for entry in pending])
        stream = self._stream or sys.stderr
        try:
            stream.write(data)
            stream.flush()
        except (OSError, ValueError):
            pass  # a closed stderr must not fail requests
