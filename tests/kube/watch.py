"""Watch streams: `?watch=true`, served as the real API server serves them.

The answer is HTTP 200 with a chunked body of newline-delimited JSON events
`{"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": {...}}`.

- resourceVersion unset or "0": synthetic ADDED events for the current state,
  then changes (the real server's "get state and start at most recent").
- resourceVersion N: every retained event after N, then changes. If the
  history no longer reaches N, the stream is one ERROR event carrying a 410
  `Expired` Status ("too old resource version: N (M)"), then it ends; a
  version the server has not reached yet is waited for up to 3 s and then
  answered with an ERROR event carrying a 504 Timeout Status.
- With a label or field selector, an object that stops matching is sent as
  DELETED and one that starts matching as ADDED (the watch cache's rule).
- allowWatchBookmarks: BOOKMARK events carry only kind, apiVersion and
  metadata.resourceVersion, about every `bookmark_interval` and 2 s before the
  timeout. sendInitialEvents=true ends the initial ADDED events with a bookmark
  annotated `k8s.io/initial-events-end`.
- timeoutSeconds ends the stream cleanly (end of the chunked body); without it
  the server picks 30 to 60 minutes, as minRequestTimeout does.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import errors
from .errors import ApiError, FieldError
from .registry import TOO_LARGE_RV_WAIT, parse_rv
from .resources import ResourceType
from .selectors import FieldSelector, LabelSelector
from .store import Event, Store, Subscription

Obj = dict[str, Any]

# The real server ends an unbounded watch after minRequestTimeout (30 min) times 1 to 2.
_MIN_REQUEST_TIMEOUT = 1800.0
# A bookmark goes out this long before the watch's timeout, so the client can resume from it.
_PRE_TIMEOUT_BOOKMARK = 2.0


class WatchHub:
    """Every open watch stream, so a test can cut them all at once."""

    def __init__(self) -> None:
        self._open: dict[Subscription, web.BaseRequest] = {}

    def add(self, sub: Subscription, request: web.BaseRequest) -> None:
        self._open[sub] = request

    def discard(self, sub: Subscription) -> None:
        self._open.pop(sub, None)

    def __len__(self) -> int:
        return len(self._open)

    def drop_all(self) -> None:
        """Abort every watch connection without ending its chunked body, like a crash would."""
        for sub, request in list(self._open.items()):
            sub.queue.put_nowait(None)
            if request.transport is not None:
                request.transport.abort()
        self._open.clear()


class WatchParams:
    def __init__(self, query: Any, labels: LabelSelector, fields: FieldSelector) -> None:
        self.labels = labels
        self.fields = fields
        self.resource_version: str = query.get("resourceVersion", "")
        self.match: str = query.get("resourceVersionMatch", "")
        self.bookmarks = parse_bool(query.get("allowWatchBookmarks"))
        self.initial_events = parse_bool(query.get("sendInitialEvents"))
        self.initial_events_set = "sendInitialEvents" in query
        raw_timeout = query.get("timeoutSeconds")
        if raw_timeout in (None, ""):
            self.timeout = _MIN_REQUEST_TIMEOUT * (1 + random.random())
        else:
            try:
                self.timeout = float(int(raw_timeout))
            except ValueError:
                raise errors.bad_request(
                    f'strconv.ParseInt: parsing "{raw_timeout}": invalid syntax') from None
        self._check()

    def _check(self) -> None:
        problems = []
        if self.initial_events_set:
            if self.match != "NotOlderThan":
                problems.append(FieldError(
                    "FieldValueForbidden", "resourceVersionMatch", None,
                    "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"))
            if self.initial_events and not self.bookmarks:
                problems.append(FieldError(
                    "FieldValueForbidden", "allowWatchBookmarks", None,
                    "sendInitialEvents requires setting allowWatchBookmarks to true"))
        elif self.match:
            problems.append(FieldError(
                "FieldValueForbidden", "resourceVersionMatch", None,
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is "
                "provided"))
        if problems:
            raise errors.invalid("meta.k8s.io", "ListOptions", "", problems)


def parse_bool(value: str | None) -> bool:
    # strconv.ParseBool, as the query decoder uses it.
    if value in (None, "", "0", "f", "F", "false", "FALSE", "False"):
        return False
    if value in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    raise errors.bad_request(f'strconv.ParseBool: parsing "{value}": invalid syntax')


def event_line(kind: str, obj: Obj) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class WatchStream:
    """One watch request: what it watches, and how it is served."""

    store: Store
    hub: WatchHub
    rt: ResourceType
    namespace: str | None
    params: WatchParams
    bookmark_interval: float

    def _matches(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        labels = (obj.get("metadata") or {}).get("labels")
        return self.params.labels.matches(labels) and self.params.fields.matches(
            lambda f: self.rt.field_value(obj, f))

    def visible(self, event: Event) -> tuple[str, Obj] | None:
        """What this watch sends for a store event, given its selectors (or nothing)."""
        now = event.type != "DELETED" and self._matches(event.obj)
        before = self._matches(event.prev)
        if now and not before:
            return "ADDED", event.obj
        if now and before:
            return "MODIFIED", event.obj
        if before:
            # The object left the selection: the previous content at the event's version.
            gone = copy.deepcopy(event.prev) if event.prev is not None else {}
            gone["metadata"]["resourceVersion"] = str(event.rv)
            return "DELETED", gone
        return None

    def _bookmark(self, initial_events_end: bool = False) -> bytes:
        meta: Obj = {"resourceVersion": str(self.store.rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return event_line("BOOKMARK", {"kind": self.rt.kind, "apiVersion": self.rt.api_version,
                                       "metadata": meta})

    async def serve(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.params.timeout
        rv_text = self.params.resource_version
        failure: ApiError | None = None
        if rv_text not in ("", "0"):
            wanted = parse_rv(rv_text)
            if wanted > self.store.rv and not await self.store.wait_for(
                    wanted, TOO_LARGE_RV_WAIT):
                failure = errors.too_large_resource_version(wanted, self.store.rv)
        # From here to the subscription nothing awaits, so no write falls between the
        # state or history this watch starts from and the live events it gets next.
        first: list[bytes] = []
        sub: Subscription | None = None
        # sendInitialEvents decides about the initial state when given; otherwise a watch
        # without a resourceVersion (or "0") starts with it.
        initial = (self.params.initial_events if self.params.initial_events_set
                   else rv_text in ("", "0"))
        if failure is None:
            if initial:
                for obj in self.store.items(self.rt.key, self.namespace):
                    if self._matches(obj):
                        first.append(event_line("ADDED", obj))
                if self.params.initial_events:
                    first.append(self._bookmark(initial_events_end=True))
            elif rv_text not in ("", "0"):
                since = parse_rv(rv_text)
                replay = self.store.events_since(since)
                if replay is None:
                    failure = errors.expired(
                        f"too old resource version: {since} ({self.store.floor})")
                else:
                    for event in replay:
                        if event.resource != self.rt.key or (
                                self.namespace is not None and event.namespace != self.namespace):
                            continue
                        shown = self.visible(event)
                        if shown:
                            first.append(event_line(*shown))
        if failure is None:
            sub = self.store.subscribe(self.rt.key, self.namespace)
            self.hub.add(sub, request)
        resp = web.StreamResponse(status=200, headers={
            "Content-Type": "application/json", "Cache-Control": "no-cache, private"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if failure is not None:
                await resp.write(event_line("ERROR", failure.status()))
                await resp.write_eof()
                return resp
            assert sub is not None
            for line in first:
                await resp.write(line)
            if await self._stream(resp, sub, deadline):
                await resp.write_eof()
        except ConnectionError:
            pass  # the client went away
        finally:
            if sub is not None:
                self.store.unsubscribe(sub)
                self.hub.discard(sub)
        return resp

    async def _stream(self, resp: web.StreamResponse, sub: Subscription, deadline: float) -> bool:
        """Send live events until the timeout (True) or until the watch is dropped (False)."""
        loop = asyncio.get_running_loop()
        next_bookmark = self._next_bookmark(loop.time(), deadline)
        while True:
            now = loop.time()
            if now >= deadline:
                return True
            wake = min(deadline, next_bookmark or deadline)
            try:
                event = await asyncio.wait_for(sub.queue.get(), max(0.0, wake - now))
            except TimeoutError:
                if next_bookmark is not None and loop.time() >= next_bookmark:
                    await resp.write(self._bookmark())
                    next_bookmark = self._next_bookmark(loop.time(), deadline)
                continue
            if event is None:
                return False
            shown = self.visible(event)
            if shown:
                await resp.write(event_line(*shown))

    def _next_bookmark(self, now: float, deadline: float) -> float | None:
        if not self.params.bookmarks:
            return None
        at = now + self.bookmark_interval
        pre_timeout = deadline - _PRE_TIMEOUT_BOOKMARK
        if pre_timeout < at:
            at = pre_timeout
        return at if at > now else None
