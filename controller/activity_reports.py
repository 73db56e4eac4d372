"""Activity of proxies in other processes: their reports, combined into one activity source.

Each proxy reports every `report_interval`: per instance, its requests in
flight and the seconds since its last request ended (never a raw clock
reading: clocks differ between processes and hosts), and how long the report
holds (its TTL). docs/contract.md: a proxy that stopped reporting is treated as
possibly active until its report expires. So while a report has not expired,
its in-flight counts count and an instance it had requests in flight for was
active at the time of the report; once it expires the proxy is forgotten,
and what it last said is kept only as "active until then".

Scale-down across processes needs one more step, the drain. In one process
the scaler sees a request the instant the proxy counts it; across processes a
request may be on its way to the replicas while the last report says idle.
So before the scaler may stop an idle instance, every live proxy must have
applied a route table in which the instance has no endpoints (it holds new
requests instead, which wakes it again at once) and reported after that with
nothing in flight. Until then this source tells the scaler "idle, but not
quite yet". The scaler itself is unchanged: it just asks again a moment later.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Protocol

from .model import ActivitySource, Key
from .spec import KEY_ID

Clock = Callable[[], float]

# A report never holds longer than this, whatever a proxy asks: a proxy's
# report interval is at most 20 s and a report holds for 3 of them, so an
# instance is never kept awake longer than a live proxy could keep it.
MAX_TTL = 60.0
MAX_PROXY_ID = 128
RECHECK = 0.025  # how soon the scaler asks again while a drain is under way


@dataclass(frozen=True, slots=True)
class Report:
    """One proxy's report as sent: see `parse_report` for the JSON."""

    proxy: str
    seq: int
    ttl: float  # seconds the report holds; 0: the proxy is going away
    table: tuple[str, int] | None  # (epoch, version) of the route table it had applied
    instances: Mapping[Key, tuple[int, float | None]]  # in flight, seconds since last end
    # API key id → seconds since it was last used
    keys: Mapping[str, float] = field(default_factory=dict)


@dataclass(slots=True)
class _Held:
    seq: int
    received: float
    expires: float
    ttl: float
    table: tuple[str, int] | None
    instances: dict[Key, tuple[int, float]]  # in flight, last end on our clock (0: never)


class ActivityReports:
    """The latest report of every live proxy, combined per instance (an ActivitySource)."""

    def __init__(self, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._proxies: dict[str, _Held] = {}
        # Last activity that forgotten proxies had reported, so that forgetting
        # a proxy never makes an instance look idle for longer than it was.
        self._retired: dict[Key, float] = {}

    def add(self, report: Report) -> bool:
        """Take a report; False if it is older than one already taken from that proxy."""
        now = self._clock()
        self._expire(now)
        old = self._proxies.get(report.proxy)
        if old is not None and report.seq <= old.seq:
            return False
        ttl = min(report.ttl, MAX_TTL)
        held = _Held(
            seq=report.seq,
            received=now,
            expires=now + ttl,
            ttl=ttl,
            table=report.table,
            instances={
                key: (n, 0.0 if idle is None else now - idle)
                for key, (n, idle) in report.instances.items()
            },
        )
        if ttl <= 0:
            self._retire(held, now)
            self._proxies.pop(report.proxy, None)
        else:
            self._proxies[report.proxy] = held
        return True

    def __call__(self, key: Key) -> tuple[int, float]:
        """(requests in flight on live proxies, when the instance was last active), our clock."""
        self._expire(self._clock())
        in_flight = 0
        last = self._retired.get(key, 0.0)
        for held in self._proxies.values():
            entry = held.instances.get(key)
            if entry is not None:
                n, end = entry
                in_flight += n
                last = max(last, held.received if n else end)
        return in_flight, last

    def live(self) -> int:
        self._expire(self._clock())
        return len(self._proxies)

    def applied(self, epoch: str, version: int, since: float) -> bool:
        """Has every live proxy reported having applied table `version` (or a later one)?

        A proxy that has reported for longer than its own TTL since `since`
        without applying it is not waited for: it is as good as gone.
        """
        now = self._clock()
        self._expire(now)
        for held in self._proxies.values():
            if held.table is not None and held.table[0] == epoch and held.table[1] >= version:
                continue
            if now - since < held.ttl:
                return False
        return True

    def proxies(self) -> list[dict[str, object]]:
        """What each live proxy last said, for `GET /v1/proxies`."""
        now = self._clock()
        self._expire(now)
        return [
            {
                "proxy": proxy,
                "report_age_seconds": round(now - held.received, 3),
                "expires_in_seconds": round(held.expires - now, 3),
                "table": None if held.table is None
                else {"epoch": held.table[0], "version": held.table[1]},
                "in_flight": sum(n for n, _ in held.instances.values()),
                "instances": len(held.instances),
            }
            for proxy, held in sorted(self._proxies.items())
        ]

    def _expire(self, now: float) -> None:
        for proxy in [p for p, held in self._proxies.items() if held.expires <= now]:
            held = self._proxies.pop(proxy)
            self._retire(held, held.expires)

    def _retire(self, held: _Held, at: float) -> None:
        # A request it had in flight may have gone on until the report expired.
        for key, (n, end) in held.instances.items():
            self._retired[key] = max(self._retired.get(key, 0.0), at if n else end)


class Drains(Protocol):
    """The route feed's side of a drain (controller/api/route_feed.py)."""

    def drain(self, key: Key) -> tuple[str, int] | None:
        """Publish `key` without endpoints; the (epoch, version) that does it, None if not READY."""

    def undrain(self, key: Key) -> None: ...

    def draining(self) -> Iterable[Key]: ...


# (idle_timeout, activity floor) of an instance that is awake and may sleep, else None.
SleepInfo = Callable[[Key], tuple[float, float] | None]


class RemoteActivity:
    """The scaler's activity source for remote proxies: reports plus the drain before a stop.

    `local` is the activity of a proxy in this process (`wakegate up`), which
    the scaler reads by itself; it is consulted only so that a drain is never
    started while that proxy is busy.
    """

    def __init__(
        self,
        reports: ActivityReports,
        sleep_info: SleepInfo,
        routes: Drains,
        local: ActivitySource | None = None,
        clock: Clock = time.monotonic,
        recheck: float = RECHECK,
    ) -> None:
        self.reports = reports
        self._sleep_info = sleep_info
        self._routes = routes
        self._local = local
        self._clock = clock
        self._recheck = recheck
        self._activated: dict[Key, float] = {}
        self._drains: dict[Key, tuple[str, int, float]] = {}  # epoch, version, started

    def __call__(self, key: Key) -> tuple[int, float]:
        in_flight, last = self.reports(key)
        last = max(last, self._activated.get(key, 0.0))
        if not self.reports.live():
            self._end_drain(key)
            return in_flight, last
        now = self._clock()
        idle_timeout = self._idle_timeout(key, in_flight, last, now)
        if idle_timeout is None:
            self._end_drain(key)
            return in_flight, last
        published = self._routes.drain(key)
        if published is None:
            return in_flight, last
        drain = self._drains.get(key)
        if drain is None or drain[:2] != published:
            drain = self._drains[key] = (*published, now)
        if self.reports.applied(drain[0], drain[1], drain[2]):
            return in_flight, last  # every proxy holds new requests now: the scaler may stop it
        # Idle, but a proxy may still forward to it: have the scaler ask again shortly.
        return 0, now - idle_timeout + self._recheck

    def report(self, report: Report) -> bool:
        """Take a proxy's report; a drain it shows activity for ends at once."""
        taken = self.reports.add(report)
        if taken:
            for key in list(self._routes.draining()):
                self(key)
        return taken

    def activated(self, key: Key) -> None:
        """A proxy asked to wake `key`: that is activity, and it needs its endpoints back."""
        self._activated[key] = self._clock()
        self._end_drain(key)

    def _idle_timeout(self, key: Key, in_flight: int, last: float, now: float) -> float | None:
        info = self._sleep_info(key)
        if info is None or in_flight:
            return None
        idle_timeout, floor = info
        last = max(last, floor)
        if self._local is not None:
            local_in_flight, local_last = self._local(key)
            if local_in_flight:
                return None
            last = max(last, local_last)
        return idle_timeout if now - last >= idle_timeout else None

    def _end_drain(self, key: Key) -> None:
        self._drains.pop(key, None)
        self._routes.undrain(key)


# --- the report on the wire ---


def parse_report(body: object) -> Report:
    """A Report from `POST /v1/activity`'s JSON; ValueError says what is wrong and how to fix it.

        {"proxy": "<id>", "seq": 12, "ttl": 3.0,
         "table": {"epoch": "<controller epoch>", "version": 7} | null,
         "instances": [{"environment": "demo", "service": "hello",
                        "in_flight": 0, "idle_seconds": 1.5 | null}]}
    """
    if not isinstance(body, dict):
        raise ValueError("the report must be a JSON object (see the README's controller API)")
    proxy = body.get("proxy")
    if not isinstance(proxy, str) or not 0 < len(proxy) <= MAX_PROXY_ID:
        raise ValueError(f"proxy must be the proxy's id, a string of 1 to {MAX_PROXY_ID} "
                         "characters")
    seq = body.get("seq")
    if not _is_int(seq) or seq < 0:
        raise ValueError("seq must be a whole number >= 0 that grows with every report")
    ttl = body.get("ttl")
    if not _is_number(ttl) or ttl < 0:
        raise ValueError("ttl must be the seconds the report holds, a number >= 0 "
                         "(0: the proxy is going away)")
    table = body.get("table")
    applied: tuple[str, int] | None = None
    if table is not None:
        if not (isinstance(table, dict) and isinstance(table.get("epoch"), str)
                and _is_int(table.get("version"))):
            raise ValueError('table must be null or {"epoch": string, "version": integer}, '
                             "the route table the proxy had applied")
        applied = (table["epoch"], table["version"])
    items = body.get("instances")
    if not isinstance(items, list):
        raise ValueError("instances must be a list of "
                         '{"environment", "service", "in_flight", "idle_seconds"}')
    instances: dict[Key, tuple[int, float | None]] = {}
    for i, item in enumerate(items):
        where = f"instances[{i}]"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be an object")
        env, svc = item.get("environment"), item.get("service")
        if not isinstance(env, str) or not isinstance(svc, str):
            raise ValueError(f"{where}: environment and service must be strings")
        n = item.get("in_flight")
        if not _is_int(n) or n < 0:
            raise ValueError(f"{where}.in_flight must be a whole number >= 0")
        idle = item.get("idle_seconds")
        if idle is not None and (not _is_number(idle) or idle < 0):
            raise ValueError(f"{where}.idle_seconds must be null (never) or seconds >= 0 since "
                             "the instance's last request ended")
        instances[(env, svc)] = (n, None if idle is None else float(idle))
    return Report(proxy, seq, float(ttl), applied, instances, _key_uses(body.get("keys")))


def _key_uses(items: object) -> Mapping[str, float]:
    """The optional `keys`: [{"id": "<12 hex digits>", "idle_seconds": seconds}]."""
    if items is None:
        return MappingProxyType({})
    if not isinstance(items, list):
        raise ValueError('keys must be a list of {"id", "idle_seconds"}')
    uses: dict[str, float] = {}
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and isinstance(item.get("id"), str)
                and KEY_ID.fullmatch(item["id"]) and _is_number(item.get("idle_seconds"))
                and item["idle_seconds"] >= 0):
            raise ValueError(f"keys[{i}] must be {{\"id\": <a key id: 12 hex digits>, "
                             '"idle_seconds": <seconds since it was last used, >= 0>}')
        uses[item["id"]] = float(item["idle_seconds"])
    return MappingProxyType(uses)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
