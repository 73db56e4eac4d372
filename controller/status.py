"""What `wakegate status` and `GET /v1/status` show of each instance: one row of plain values.

Read off the model as it is now, with the instance's activity (how many
requests are in flight on all proxies, when it was last active) and where
its runtime writes its log.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from .model import Instance
from .spec import InstanceSpec, image_tag


def status_rows(instances: Iterable[Instance], activity: Callable[[Instance], tuple[int, float]],
                log_path: Callable[[InstanceSpec], str], proxy_port: int) -> list[dict[str, Any]]:
    now = time.monotonic()
    port = "" if proxy_port == 80 else f":{proxy_port}"
    rows = []
    for inst in instances:
        in_flight, last = activity(inst)
        rows.append(
            {
                "environment": inst.spec.environment.name,
                "service": inst.spec.service.name,
                "kind": inst.spec.environment.kind,
                "access": inst.spec.environment.access,
                "state": inst.state,
                "replicas": len(inst.replicas),  # ready: in the route table
                "desired_replicas": inst.desired(),
                "version": inst.version,
                # The environment's prefix, and the image tag the version runs as there.
                "prefix": inst.spec.environment.prefix,
                "tag": image_tag(inst.version, inst.spec.environment.prefix),
                "in_flight": in_flight,
                "idle_seconds": 0.0 if in_flight else round(now - last, 3),
                "idle_timeout": inst.spec.environment.idle_timeout,
                "url": f"http://{inst.host}{port}/",
                "error": inst.error,
                "failures_in_a_row": inst.failed_starts(now),
                # Rounded up: 0 only once it is really over.
                "backoff_seconds": math.ceil(inst.backoff_left(now) * 10) / 10,
                "log": log_path(inst.spec),
            }
        )
    return rows
