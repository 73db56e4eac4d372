"""The controller's Prometheus metrics, read from the instances at scrape time."""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .model import Instance
from .scaler import Scaler

_LABELS = ["environment", "service"]


class ControllerMetrics(Collector):
    def __init__(self) -> None:
        self.scaler: Scaler | None = None
        self._scale_events: dict[tuple[str, str, str], int] = {}

    def scale_event(self, inst: Instance, direction: str) -> None:
        key = (*inst.key, direction)
        self._scale_events[key] = self._scale_events.get(key, 0) + 1

    def forget_all_but(self, keys: Collection[tuple[str, str]]) -> None:
        """Only these instances' scale events from now on (one that is gone leaves
        /metrics)."""
        for key in [k for k in self._scale_events if k[:2] not in keys]:
            del self._scale_events[key]

    def collect(self) -> Iterator[Metric]:
        if self.scaler is not None:
            self.forget_all_but(self.scaler.instances)
        replicas = GaugeMetricFamily(
            "wakegate_instance_replicas", "Replicas running for the instance.", labels=_LABELS
        )
        idle = GaugeMetricFamily(
            "wakegate_instance_idle_seconds",
            "Seconds since the instance last had a request in flight (0 while it has one).",
            labels=_LABELS,
        )
        last_request = GaugeMetricFamily(
            "wakegate_instance_last_request_timestamp_seconds",
            "Unix time the instance was last active (its last request ended, or it woke).",
            labels=_LABELS,
        )
        backoff = GaugeMetricFamily(
            "wakegate_instance_backoff_seconds",
            "Seconds left of the instance's crash back-off (0: none): after repeated failed "
            "starts no start is tried and requests get 503.",
            labels=_LABELS,
        )
        desired = GaugeMetricFamily(
            "wakegate_instance_desired_replicas",
            "Replicas the instance should have now: by load while it scales by load, else "
            "1 or min_replicas while it runs, 0 while it sleeps.",
            labels=_LABELS,
        )
        concurrency = GaugeMetricFamily(
            "wakegate_instance_concurrency",
            "Requests in flight on all proxies (held ones included), averaged over the "
            "autoscale window; only for instances that scale by load (max_replicas > 1).",
            labels=_LABELS,
        )
        max_replicas = GaugeMetricFamily(
            "wakegate_instance_max_replicas",
            "The most replicas the instance may have (its environment's max_replicas).",
            labels=_LABELS,
        )
        events = CounterMetricFamily(
            "wakegate_scale_events",
            "Instances scaled up (woke, replica added) or down (slept, replica lost).",
            labels=[*_LABELS, "direction"],
        )
        if self.scaler is not None:
            now, wall = time.monotonic(), time.time()
            for inst in self.scaler.instances.values():
                labels = list(inst.key)
                in_flight, last = self.scaler.activity(inst)
                replicas.add_metric(labels, len(inst.replicas))
                desired.add_metric(labels, inst.desired())
                max_replicas.add_metric(labels, inst.spec.environment.max_replicas)
                if inst.concurrency is not None:  # scaled by load now (scaling.py)
                    concurrency.add_metric(labels, inst.concurrency)
                backoff.add_metric(labels, inst.backoff_left(now))
                idle.add_metric(labels, 0.0 if in_flight else max(now - last, 0.0))
                last_request.add_metric(labels, wall - (now - last))
        for (env, svc, direction), n in sorted(self._scale_events.items()):
            events.add_metric([env, svc, direction], n)
        release = GaugeMetricFamily(
            "wakegate_release_active",
            "1 for the colour a production instance's host reaches, 0 for the other.",
            labels=[*_LABELS, "colour"],
        )
        if self.scaler is not None:
            for key, inst in sorted(self.scaler.instances.items()):
                if inst.spec.environment.kind != "production":
                    continue
                live = self.scaler.releases.of(inst).live
                for colour in ("blue", "green"):
                    release.add_metric([*key, colour], 1.0 if live == colour else 0.0)
        ephemeral = GaugeMetricFamily(
            "wakegate_ephemeral_environments",
            "Ephemeral environments that exist now (made by `wakegate env create`, not yet "
            "expired or deleted); max_ephemeral_environments bounds it.",
        )
        if self.scaler is not None:
            ephemeral.add_metric([], len(self.scaler.runtime.ephemeral.records()))
        yield from (replicas, desired, concurrency, max_replicas, idle, last_request, backoff,
                    events, release, ephemeral)
