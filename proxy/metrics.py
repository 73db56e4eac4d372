"""The proxy's Prometheus metrics.

Counting happens on the hot path, so it is plain integer arithmetic on
per-instance objects (the proxy is single-threaded: no locks needed); the
Prometheus families are built only when /metrics is scraped. Labels carry the
environment and service names only: never hosts, paths, keys or addresses.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Collection, Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
COLD_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        out, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out


class InstanceStats:
    """Everything the proxy counts for one instance."""

    __slots__ = ("auth_failures", "codes", "cold_start", "cold_starts", "duration")

    def __init__(self) -> None:
        self.codes: dict[int, int] = {}
        self.duration = Histogram(REQUEST_BUCKETS)
        self.auth_failures: dict[str, int] = {}
        self.cold_starts: dict[str, int] = {}
        self.cold_start = Histogram(COLD_START_BUCKETS)

    def request_done(self, status: int, seconds: float) -> None:
        self.codes[status] = self.codes.get(status, 0) + 1
        self.duration.observe(seconds)

    def auth_failed(self, reason: str) -> None:
        self.auth_failures[reason] = self.auth_failures.get(reason, 0) + 1

    def cold_start_done(self, result: str, seconds: float | None) -> None:
        self.cold_starts[result] = self.cold_starts.get(result, 0) + 1
        if seconds is not None:
            self.cold_start.observe(seconds)


Key = tuple[str, str]


class ProxyMetrics(Collector):
    def __init__(
        self,
        in_flight: Callable[[], dict[Key, int]],
        held: Callable[[], dict[Key, int]],
    ) -> None:
        self.stats: dict[Key, InstanceStats] = {}
        self._in_flight = in_flight
        self._held = held
        # Set by a link to a controller in another process (split mode): whether it
        # answers. Exported as wakegate_controller_connected; absent in `wakegate up`.
        self.controller_connected: Callable[[], bool] | None = None

    def forget_all_but(self, keys: Collection[Key]) -> None:
        """Only these instances' series from now on: an instance that left the route table
        (an ephemeral environment gone, a service removed) leaves /metrics too, so that
        environments made and removed all day do not grow it without end. A request still
        finishing on a removed one counts it again, until the routes change again."""
        for key in [k for k in self.stats if k not in keys]:
            del self.stats[key]

    def of(self, key: Key) -> InstanceStats:
        st = self.stats.get(key)
        if st is None:
            st = self.stats[key] = InstanceStats()
        return st

    def collect(self) -> Iterator[Metric]:
        labels = ["environment", "service"]
        total = CounterMetricFamily(
            "wakegate_requests", "Requests answered by the proxy, by status code.",
            labels=[*labels, "code"],
        )
        duration = HistogramMetricFamily(
            "wakegate_request_duration_seconds",
            "Time from a request's arrival to the end of its response.", labels=labels,
        )
        auth = CounterMetricFamily(
            "wakegate_auth_failures", "Requests refused for a missing or wrong API key.",
            labels=[*labels, "reason"],
        )
        cold = CounterMetricFamily(
            "wakegate_cold_starts", "Activations waited on by held requests, by result.",
            labels=[*labels, "result"],
        )
        cold_dur = HistogramMetricFamily(
            "wakegate_cold_start_duration_seconds",
            "Time from the first held request's arrival to the instance being ready.",
            labels=labels,
        )
        for (env, svc), st in sorted(self.stats.items()):
            for code, n in sorted(st.codes.items()):
                total.add_metric([env, svc, str(code)], n)
            duration.add_metric([env, svc], st.duration.cumulative(), st.duration.sum)
            for reason, n in sorted(st.auth_failures.items()):
                auth.add_metric([env, svc, reason], n)
            for result, n in sorted(st.cold_starts.items()):
                cold.add_metric([env, svc, result], n)
            cold_dur.add_metric([env, svc], st.cold_start.cumulative(), st.cold_start.sum)
        yield from (total, duration, auth, cold, cold_dur)
        yield _gauge(
            "wakegate_requests_in_flight", "Requests being answered now (held ones included).",
            self._in_flight(),
        )
        yield _gauge(
            "wakegate_held_requests", "Requests waiting for their instance to wake.",
            self._held(),
        )
        if self.controller_connected is not None:
            connected = GaugeMetricFamily(
                "wakegate_controller_connected",
                "1 while this proxy's link to the controller works (it has a route table "
                "and its last call succeeded), 0 while it cannot reach or use it.",
            )
            connected.add_metric([], 1.0 if self.controller_connected() else 0.0)
            yield connected


def _gauge(name: str, doc: str, values: dict[Key, int]) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=["environment", "service"])
    for (env, svc), n in sorted(values.items()):
        g.add_metric([env, svc], n)
    return g
