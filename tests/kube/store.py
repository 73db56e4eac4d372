"""The object store: what etcd plus the watch cache are to the real API server.

One global resourceVersion counter orders every write. Each write is an event
kept in a bounded history, so a watch can resume from any resourceVersion the
history still covers; older ones are "too old" (410 Expired), exactly as when
the real watch cache has moved on. Everything runs on one event loop and no
method awaits while it changes state, so a write, its history entry and its
delivery to every open watch happen at once.
"""

from __future__ import annotations

import asyncio
import copy
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects

# Where the counter starts: any value works, a non-trivial one keeps tests honest about
# treating resourceVersions as opaque strings rather than small integers.
FIRST_RESOURCE_VERSION = 1000


def key_text(key: Key) -> str:
    """The object's storage key below its resource's prefix; lists are ordered by it."""
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED or DELETED
    resource: str  # ResourceType.key
    namespace: str
    name: str
    obj: Obj  # the state after the write; for DELETED the last state, at the deletion's rv
    prev: Obj | None  # the state before the write


class Subscription:
    """One open watch: events of a resource (in a namespace) as they are written."""

    def __init__(self, resource: str, namespace: str | None) -> None:
        self.resource = resource
        self.namespace = namespace
        # None tells the watch to end at once (the test hook that drops connections).
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()

    def wants(self, event: Event) -> bool:
        return event.resource == self.resource and (
            self.namespace is None or event.namespace == self.namespace)


class Store:
    def __init__(self, history: int) -> None:
        if history < 1:
            raise ValueError("history must keep at least one event")
        self.rv = FIRST_RESOURCE_VERSION
        # Watches may start from any resourceVersion >= floor; older ones are expired.
        self.floor = self.rv
        self.history: deque[Event] = deque(maxlen=history)
        self._objects: dict[str, dict[Key, Obj]] = {}
        self._subscriptions: set[Subscription] = set()
        self._listeners: list[Callable[[Event], None]] = []
        self._progress: asyncio.Event | None = None

    # --- reads (copies, so no caller can change the store behind its back) ---

    def get(self, resource: str, namespace: str, name: str) -> Obj | None:
        obj = self._objects.get(resource, {}).get((namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def items(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Objects in the order etcd keeps their keys (`namespace/name` as a string)."""
        found = self._objects.get(resource, {})
        keys = sorted((k for k in found if namespace is None or k[0] == namespace), key=key_text)
        return [copy.deepcopy(found[k]) for k in keys]

    def snapshot(self, resource: str, namespace: str | None, rv: int) -> list[Obj] | None:
        """The objects as they were at `rv`, or None if the history no longer reaches it."""
        if rv < self.floor:
            return None
        state = {k: v for k, v in self._objects.get(resource, {}).items()
                 if namespace is None or k[0] == namespace}
        for event in reversed(self.history):
            if event.rv <= rv:
                break
            if event.resource != resource or (namespace is not None
                                              and event.namespace != namespace):
                continue
            key = (event.namespace, event.name)
            if event.type == "ADDED":
                state.pop(key, None)
            elif event.prev is not None:
                state[key] = event.prev
        return [copy.deepcopy(state[k]) for k in sorted(state, key=key_text)]

    def events_since(self, rv: int) -> list[Event] | None:
        """Every event after `rv`, or None if some of them were already dropped."""
        if rv < self.floor:
            return None
        return [e for e in self.history if e.rv > rv]

    # --- writes ---

    def put(self, resource: str, obj: Obj) -> Event:
        """Store a created or changed object under a new resourceVersion."""
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        prev = self._objects.get(resource, {}).get(key)
        stored = copy.deepcopy(obj)
        rv = self._next()
        stored["metadata"]["resourceVersion"] = str(rv)
        self._objects.setdefault(resource, {})[key] = stored
        return self._record(Event(rv, "MODIFIED" if prev else "ADDED", resource, key[0], key[1],
                                  stored, prev))

    def remove(self, resource: str, namespace: str, name: str) -> Event:
        prev = self._objects.get(resource, {}).pop((namespace, name))
        rv = self._next()
        # A watch sees the deleted object at the deletion's resourceVersion, so a client
        # that resumes from it does not get the deletion again.
        last = copy.deepcopy(prev)
        last["metadata"]["resourceVersion"] = str(rv)
        return self._record(Event(rv, "DELETED", resource, namespace, name, last, prev))

    def compact(self) -> None:
        """Forget the whole history: a watch from any earlier resourceVersion is now expired."""
        self.history.clear()
        self.floor = self.rv

    def _next(self) -> int:
        self.rv += 1
        return self.rv

    def _record(self, event: Event) -> Event:
        if len(self.history) == self.history.maxlen:
            # The oldest event drops out; a watch must now start at or after it.
            self.floor = self.history[0].rv
        self.history.append(event)
        for sub in self._subscriptions:
            if sub.wants(event):
                sub.queue.put_nowait(event)
        for listener in self._listeners:
            listener(event)
        if self._progress is not None:
            self._progress.set()
            self._progress = None
        return event

    # --- observers ---

    def subscribe(self, resource: str, namespace: str | None) -> Subscription:
        sub = Subscription(resource, namespace)
        self._subscriptions.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscriptions.discard(sub)

    def add_listener(self, listener: Callable[[Event], None]) -> None:
        """Call `listener` synchronously after every write (controllers use it to wake up)."""
        self._listeners.append(listener)

    async def wait_for(self, rv: int, timeout: float) -> bool:
        """Wait until the store reached `rv`; False if it did not within `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.rv < rv:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            if self._progress is None:
                self._progress = asyncio.Event()
            try:
                await asyncio.wait_for(self._progress.wait(), remaining)
            except TimeoutError:
                return self.rv >= rv
        return True
