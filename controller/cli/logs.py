"""Log output: `--log-format text` (for people) or `json` (one object per line, for machines).

Every line has time, level, logger and message; a line about a request or a
state change also carries its fields (environment, service, status, ...),
given as `extra={"fields": {...}}`. Secrets never reach a log call, so no
filtering happens here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    def __init__(self, worker: int | None) -> None:
        super().__init__()
        self._worker = worker

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self._worker is not None:
            line["worker"] = self._worker
            line["pid"] = os.getpid()
        fields = getattr(record, "fields", None)
        if fields:
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, worker: int | None) -> None:
        # With several workers their lines interleave on one stderr: say whose each is.
        tag = f" [worker {worker} pid {os.getpid()}]" if worker is not None else ""
        super().__init__(f"%(asctime)s %(levelname)s %(name)s{tag}: %(message)s")


def _iso(created: float) -> str:
    millis = int(created * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created)) + f".{millis:03d}Z"


def setup(level: str, fmt: str = "text", worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(worker) if fmt == "json" else TextFormatter(worker))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # aiohttp's own access log is off (proxy/request_log.py writes ours); its error log stays.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
