"""Leader election with a coordination.k8s.io/v1 Lease, the way client-go does it.

Any number of controllers may run; the one holding the Lease acts. The holder
renews it every `retry_period`; if it cannot renew for `renew_deadline` it
stops acting (before `lease_duration` has passed, so that two never act at
once); a candidate takes the Lease over once it has not been renewed for
`lease_duration`. Every write carries the resourceVersion it read, so of two
candidates racing for an expired Lease exactly one wins (the other gets 409).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client as k8s

from ...spec import KubernetesSettings
from .client import KubeError, call, format_micro_time, parse_micro_time

log = logging.getLogger("wakegate.leader")


class LeaderElector:
    def __init__(
        self, api_client: k8s.ApiClient, settings: KubernetesSettings, identity: str
    ) -> None:
        self._api = k8s.CoordinationV1Api(api_client)
        self._s = settings
        self.identity = identity
        self.is_leader = False
        self._last_renew = 0.0  # monotonic time of our last successful renewal
        self._renewer: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Return once this process holds the Lease."""
        announced = False
        last_problem = ""
        while True:
            try:
                if await self._try_acquire_or_renew():
                    self.is_leader = True
                    self._last_renew = time.monotonic()
                    log.info("%s is the leader (lease %s/%s)", self.identity,
                             self._s.lease_namespace, self._s.lease_name)
                    return
            except Exception as exc:  # API server unreachable or refusing: keep trying
                if str(exc) != last_problem:  # once per problem, not once per retry
                    last_problem = str(exc)
                    log.warning("leader election: %s", exc)
            if not announced:
                log.info("%s waits to become the leader", self.identity)
                announced = True
            await asyncio.sleep(self._s.retry_period)

    def keep_renewing(self, on_lost: Callable[[], None]) -> None:
        self._renewer = asyncio.ensure_future(self._renew_loop(on_lost))

    async def _renew_loop(self, on_lost: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(self._s.retry_period)
            started = time.monotonic()
            left = self._last_renew + self._s.renew_deadline - started
            try:
                # An attempt may not outlive the renew deadline: a hung call must
                # not keep this controller acting once the Lease may be lost.
                async with asyncio.timeout(max(left, 0.001)):
                    renewed = await self._try_acquire_or_renew()
                if renewed:
                    self._last_renew = started  # the time before the write, to be safe
                    continue
                reason = "another controller holds the lease"
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
            if time.monotonic() - self._last_renew < self._s.renew_deadline:
                continue  # a conflict or an error: retry while the deadline allows
            self.is_leader = False
            log.error("lost leadership (%s): stopping", reason)
            on_lost()
            return

    async def _try_acquire_or_renew(self) -> bool:
        s = self._s
        now = format_micro_time(time.time())
        try:
            lease = await call(self._api.read_namespaced_lease, s.lease_name, s.lease_namespace)
        except KubeError as exc:
            if exc.status != 404:
                raise
            body = self._lease_body(None, now, acquired=True, transitions=0)
            try:
                await call(self._api.create_namespaced_lease, s.lease_namespace, body)
            except KubeError as create_exc:
                if create_exc.status == 409:  # someone else created it first
                    return False
                raise
            return True
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        if holder and holder != self.identity:
            renewed = parse_micro_time(spec.get("renewTime") or spec.get("acquireTime")) or 0.0
            duration = float(spec.get("leaseDurationSeconds") or s.lease_duration)
            if time.time() < renewed + duration:
                return False
        transitions = int(spec.get("leaseTransitions") or 0)
        acquired = holder != self.identity
        body = self._lease_body(
            lease, now, acquired=acquired, transitions=transitions + (1 if acquired else 0)
        )
        try:
            await call(self._api.replace_namespaced_lease, s.lease_name, s.lease_namespace, body)
        except KubeError as exc:
            if exc.status == 409:  # someone else wrote it since we read it
                return False
            raise
        return True

    def _lease_body(
        self, current: dict[str, Any] | None, now: str, acquired: bool, transitions: int
    ) -> dict[str, Any]:
        s = self._s
        metadata: dict[str, Any] = {"name": s.lease_name, "namespace": s.lease_namespace}
        spec: dict[str, Any] = {}
        if current is not None:
            metadata["resourceVersion"] = current["metadata"]["resourceVersion"]
            spec = dict(current.get("spec") or {})
        spec.update(
            holderIdentity=self.identity,
            # Whole seconds on the wire; round up so a sub-second setting still holds.
            leaseDurationSeconds=max(1, int(-(-s.lease_duration // 1))),
            renewTime=now,
            leaseTransitions=transitions,
        )
        if acquired:
            spec["acquireTime"] = now
        return {
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": metadata, "spec": spec,
        }

    async def release(self) -> None:
        """Give the Lease up at once, so a successor need not wait for it to expire."""
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
        if not self.is_leader:
            return
        self.is_leader = False
        s = self._s
        # Best effort, and bounded: a slow API server must not keep this controller
        # from exiting (its successor then waits for the Lease to expire instead).
        # (`async with`: asyncio.timeout is an async context manager only; in a plain
        # `with` it raised at once, the suppress hid it, and no Lease was ever released.)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(s.renew_deadline):
                lease = await call(self._api.read_namespaced_lease, s.lease_name,
                                   s.lease_namespace)
                spec = lease.get("spec") or {}
                if spec.get("holderIdentity") != self.identity:
                    return
                spec["holderIdentity"] = ""
                spec["renewTime"] = "1970-01-01T00:00:00.000000Z"
                await call(self._api.replace_namespaced_lease, s.lease_name,
                           s.lease_namespace, lease)
