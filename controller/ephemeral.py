"""Ephemeral environments: made from another one, asleep until their first request, gone at
their expiry or when deleted. Runtime-independent: what a runtime keeps or makes for them is
its `EphemeralStore` (runtimes/base.py); the instances are the scaler's.

- create: everything is checked first (ephemeral_checks.py: nothing is made on a refusal),
  the record is kept by the store (which makes what the platform needs, asleep), then its
  instances appear: locally at once (the scaler builds them from the records), on
  Kubernetes once discovery finds them.
- delete, and expiry: the environment's routes go at once (held requests get 404
  `no_route`), requests and WebSockets in flight get its drain timeout (its
  `scale_down_delay`), then every replica is stopped and the store, the keys and the
  versions forget it. One removal per environment, however many callers ask.
- expiry: one task sleeps until the next expiry (poked when one is made or extended) and
  removes what is due; after a restart, whatever expired meanwhile goes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from typing import Any

from .ephemeral_checks import (
    EnvironmentRefused,
    check_create,
    check_ttl,
    config_environments,
    show_value,
)
from .ephemeral_specs import ephemeral_specs
from .events import environment_event
from .model import EphemeralRecord, Instance
from .runtimes.base import EphemeralStore
from .scaler import Scaler

__all__ = ["EnvironmentRefused", "EphemeralManager"]

log = logging.getLogger("wakegate.controller")

DRAIN_CHECK = 0.05  # seconds between two looks at the requests in flight while draining
MAX_EXPIRY_SLEEP = 60.0  # the expiry task looks at least this often
NOT_ACTING_CHECK = 1.0  # ... and this often while the scaler may not act (not the leader)
RETRY_AFTER = 10.0  # a removal that failed is tried again after this, by the expiry task
DISCOVERY_DEADLINE = 60.0  # how long create waits for the platform to show the instances


class EphemeralManager:
    """Creates, extends and removes ephemeral environments, and expires them."""

    def __init__(self, scaler: Scaler) -> None:
        self.scaler = scaler
        # One create at a time: the limit and the name are checked against what exists.
        self._create_lock = asyncio.Lock()
        self._creating: set[str] = set()  # ... and its name: no delete or extend meanwhile
        self._removals: dict[str, asyncio.Task[None]] = {}
        # A removal that failed: when the expiry task tries it again (monotonic).
        self._retry_at: dict[str, float] = {}
        self._left: dict[str, list[Instance]] = {}  # ... and the instances it took
        self._poke = asyncio.Event()  # an expiry moved: the expiry task looks again
        self._changed = asyncio.Event()  # a new route table: the instances changed
        self._expiry: asyncio.Task[None] | None = None
        self._closing = False
        scaler.subscribe(lambda _table: self._changed.set())

    @property
    def store(self) -> EphemeralStore:
        return self.scaler.runtime.ephemeral

    def _kept(self) -> dict[str, EphemeralRecord]:
        """What the store keeps, less what is being made or removed right now. (None is
        named like another environment: the start, apply and, on Kubernetes, discovery
        refuse that.)"""
        return {r.name: r for r in self.store.records()
                if r.name not in self._removals and r.name not in self._creating}

    def records(self) -> dict[str, EphemeralRecord]:
        """Every ephemeral environment that exists: not being made, not on its way out (a
        removal that failed and waits to be tried again included)."""
        return {name: r for name, r in self._kept().items() if name not in self._left}

    def _going(self, name: str) -> str | None:
        """The environment of this name (any case) whose removal is under way or waits to be
        tried again, if there is one."""
        return next((n for n in (*self._removals, *self._left) if n.lower() == name.lower()),
                    None)

    # --- create, extend ---

    async def create(self, body: Mapping[str, Any]) -> tuple[EphemeralRecord, str | None]:
        """A new ephemeral environment as `body` asks (POST /v1/environments), and its API
        key when its access is api_key; EnvironmentRefused when it is refused."""
        async with self._create_lock:
            record, services = check_create(self.scaler, body, time.time())
            name = record.name
            self._creating.add(name)
            try:
                return await self._create(record, services)
            finally:
                self._creating.discard(name)
                self._poke.set()  # the expiry task skipped it while it was made

    async def _create(self, record: EphemeralRecord, services: list[str]
                      ) -> tuple[EphemeralRecord, str | None]:
        name = record.name
        # What an earlier environment of this name left (a config one removed by apply) must
        # not carry over: its versions would win, its keys would open this one.
        self.scaler.keys.forget_environment(name)
        self.scaler.versions.forget_environment(name)
        key = None
        try:
            await self.store.create(record, ephemeral_specs(self.scaler.config, [record]))
            if record.access == "api_key":
                try:
                    # Before the instances appear: their first route has the key's digest.
                    key = await self.scaler.keys.create_for_environment_async(name, services)
                except Exception:
                    await self.store.remove(name)
                    self.scaler.keys.forget_environment(name)
                    raise
        except Exception as exc:
            log.error("ephemeral environment %s could not be made: %s", name, exc,
                      extra=environment_event(name, "environment_create_failed",
                                              error=str(exc)))
            raise EnvironmentRefused(502, "create_failed", f"{name} could not be made: "
                                     f"{exc}. Nothing was made; try again.") from None
        if record.access == "public" and \
                config_environments(self.scaler).get(record.source, ("", ""))[1] == "api_key":
            log.warning("ephemeral environment %s is a PUBLIC copy of %s, which needs an API "
                        "key: anyone who can reach the proxy reaches its services", name,
                        record.source, extra=environment_event(name, "environment_opened",
                                                               source=record.source))
        self._poke.set()
        await self._instances_appear(record)
        log.info("ephemeral environment %s made from %s (%s), expires in %.0f s", name,
                 record.source, ", ".join(f"{s} {v}" for s, v in record.versions),
                 record.expires - record.created,
                 extra=environment_event(name, "environment_created", source=record.source,
                                         access=record.access, expires=int(record.expires),
                                         versions=dict(record.versions)))
        return record, key

    async def _instances_appear(self, record: EphemeralRecord) -> None:
        """Its instances are the scaler's (asleep) when this returns."""
        if not self.scaler.runtime.versions_on_objects:
            # Local: the scaler builds them from the records.
            self.scaler.sync_instances(self.scaler.wanted_specs(self.scaler.config))
            return
        # Kubernetes: discovery finds them; every change of the instances publishes.
        wanted = {(record.name, service) for service, _ in record.versions}
        deadline = time.monotonic() + DISCOVERY_DEADLINE
        while True:
            self._changed.clear()
            if wanted <= self.scaler.instances.keys():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                log.warning("ephemeral environment %s: the platform has not shown all its "
                            "instances after %.0f s; they appear when it does", record.name,
                            DISCOVERY_DEADLINE)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def ephemeral(self, name: str) -> EphemeralRecord:
        """The ephemeral environment of this name (ignoring case, as its hosts do), else 404
        unknown_environment (or 409 not_ephemeral for one of the config, 409 being_created
        while it is made)."""
        said = show_value(name)
        if name.lower() in {n.lower() for n in self._creating}:
            raise EnvironmentRefused(409, "being_created", f"{said} is being made; try "
                                     "again once `wakegate env create` has answered.")
        record = next((r for n, r in self.records().items() if n.lower() == name.lower()),
                      None)
        if record is not None:
            return record
        if name.lower() in {n.lower() for n in config_environments(self.scaler)}:
            raise EnvironmentRefused(409, "not_ephemeral", f"{said} is an environment of "
                                     "the config, not an ephemeral one: remove it from the "
                                     "config and apply instead.")
        being = " (it is being deleted)" if self._going(name) is not None else ""
        raise EnvironmentRefused(404, "unknown_environment", f"There is no ephemeral "
                                 f"environment {said}{being}; `wakegate env list` lists them.")

    async def extend(self, name: str, ttl_value: object) -> EphemeralRecord:
        """It expires `ttl_value` from now (never beyond ephemeral.max_ttl from now)."""
        name = self.ephemeral(name).name
        ttl = check_ttl(ttl_value, self.scaler.config.ephemeral)
        try:
            record = await self.store.extend(name, time.time() + ttl)
        except Exception as exc:
            raise EnvironmentRefused(502, "extend_failed", f"{name}'s expiry could not be "
                                     f"changed: {exc}. It is as it was.") from None
        self._poke.set()
        log.info("ephemeral environment %s now expires in %.0f s", name, ttl,
                 extra=environment_event(name, "environment_extended",
                                         expires=int(record.expires)))
        return record

    # --- delete, expiry ---

    async def delete(self, name: str) -> str:
        """Everything of it is gone when this returns its name (a delete already under way
        is joined, not started again)."""
        going = self._going(name)
        name = going if going is not None else self.ephemeral(name).name
        try:
            # Shielded: a caller that goes away does not stop a removal half-way.
            await asyncio.shield(self._removal(name, "deleted"))
            return name
        except Exception as exc:
            raise EnvironmentRefused(
                502, "delete_failed", f"{name} could not be removed: {exc}. It serves no "
                f"more requests, and wakegate tries again in {RETRY_AFTER:g}s.") from None

    def _removal(self, name: str, why: str) -> asyncio.Task[None]:
        task = self._removals.get(name)
        if task is None:
            task = asyncio.ensure_future(self._remove(name, why))
            self._removals[name] = task

            def done(finished: asyncio.Task[None]) -> None:
                if self._removals.get(name) is finished:
                    del self._removals[name]
                if not finished.cancelled() and finished.exception() is not None:
                    # Tried again by the expiry task, which looks again now.
                    self._retry_at[name] = time.monotonic() + RETRY_AFTER
                    self._poke.set()

            task.add_done_callback(done)
        return task

    async def _remove(self, name: str, why: str) -> None:
        started = time.monotonic()
        # Its routes are gone from here on (a retry: they went the first time).
        taken = [*self._left.pop(name, []), *self.scaler.take_environment(name)]
        try:
            await self._expired_now(name)
            await self._drain(taken, started)
            await asyncio.gather(*(self._stop(inst) for inst in taken))
            # The record last: while it is kept, a failure here is tried again.
            self.scaler.keys.forget_environment(name)
            self.scaler.versions.forget_environment(name)
            await self.store.remove(name)
        except Exception as exc:
            # It stays out of the routes (`removing`); the expiry task tries again.
            self._left[name] = taken
            log.error("ephemeral environment %s could not be removed: %s", name, exc,
                      extra=environment_event(name, "environment_removal_failed",
                                              error=str(exc)))
            raise
        self._retry_at.pop(name, None)
        self.scaler.environment_gone(name)
        log.info("ephemeral environment %s %s: everything of it is gone (%.0f ms)", name, why,
                 (time.monotonic() - started) * 1000,
                 extra=environment_event(name, f"environment_{why}",
                                         duration_ms=round((time.monotonic() - started) * 1000)))

    async def _expired_now(self, name: str) -> None:
        """Recorded as expired before anything is stopped: a removal cut short (a shutdown,
        a new leader) is finished after the restart, never undone."""
        now = time.time()
        record = next((r for r in self.store.records() if r.name == name), None)
        if record is not None and record.expires > now:
            await self.store.extend(name, now)

    async def _drain(self, taken: list[Instance], started: float) -> None:
        """Until no request is in flight on these instances, or each one's drain timeout
        (its environment's scale_down_delay) has passed."""
        while any(self.scaler.activity(inst)[0] > 0
                  and time.monotonic() - started < inst.spec.environment.scale_down_delay
                  for inst in taken):
            await asyncio.sleep(DRAIN_CHECK)

    async def _stop(self, inst: Instance) -> None:
        # The lock: an activation (or a sleep) under way ends first; its replicas go too.
        async with inst.lock:
            replicas = list(inst.replicas)
            if replicas:
                await self.scaler.runtime.stop(replicas, inst.spec.service.stop_grace)
            inst.replicas = [r for r in inst.replicas if r not in replicas]
            inst.fell_asleep()

    def start(self) -> None:
        """Expire from now on (once the scaler runs)."""
        self._expiry = asyncio.ensure_future(self._expire())

    async def _expire(self) -> None:
        while not self._closing:
            wait = MAX_EXPIRY_SLEEP if self.scaler.acting else NOT_ACTING_CHECK
            if self.scaler.acting:
                now, mono = time.time(), time.monotonic()
                for record in self._kept().values():
                    retry = self._retry_at.get(record.name)
                    due = record.expires - now if retry is None else retry - mono
                    if due <= 0:
                        if retry is None:
                            log.info("ephemeral environment %s expired", record.name)
                        self._removal(record.name, "expired" if retry is None else "removed")
                    else:
                        wait = min(wait, due)
            self._poke.clear()
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancel that
            # comes as the poke is set (a create's last step, right before a stop).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._poke.wait()

    async def close(self) -> None:
        """Stop expiring; removals under way are cancelled (an expired environment that
        is left goes at the next start)."""
        self._closing = True
        self._poke.set()
        tasks = [*([self._expiry] if self._expiry is not None else []),
                 *self._removals.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
