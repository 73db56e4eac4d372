"""The control loops a real cluster runs, reduced to what wakegate depends on.

- Deployments: pods for the current pod template (named
  `<deployment>-<pod-template-hash>-<5 chars>`, owned by a ReplicaSet of that
  name, which this fake does not serve), a rollout that starts the new pods and
  stops an old one for each new one that is ready (Recreate stops the old ones
  first), a scale-down that removes the not-ready pods first, then the lowest
  `controller.kubernetes.io/pod-deletion-cost`, then the newest, the
  `deployment.kubernetes.io/revision` annotation and the status
  (replicas, updated, ready, available, unavailable, observedGeneration,
  conditions); zero counts are left out, as the real encoder omits them.
- EndpointSlices: one slice per Service with a selector and per set of
  resolved ports, named `<service>-<5 chars>`; an endpoint for every matching
  pod that has an IP, ready only while the pod is Ready and not terminating; a
  placeholder slice (no endpoints, no ports) when nothing matches.
- Garbage collection: pods of a deleted Deployment, slices of a deleted Service.
- Namespaces: a namespace being deleted is emptied, then removed, 5 s after its
  deletion, as the real controller waits (so that `kubectl delete -k` still
  finds the objects of the namespaces it deleted first); a setting of the fake
  (`namespace_deletion_grace`), shorter for tests that delete many.

Everything is level-triggered: any write to a watched resource wakes one loop
that reconciles the whole (small) state and writes only what differs, so it
settles after a pass that changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import logging
import math
import uuid
from typing import Any

from .errors import ApiError
from .loop import ControlLoop
from .registry import Registry
from .resources import RESOURCES, by_kind
from .selectors import from_map
from .store import Store
from .strategies import now_time

log = logging.getLogger("tests.kube.controllers")

Obj = dict[str, Any]

MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
SLICE_CONTROLLER = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
REVISION = "deployment.kubernetes.io/revision"
DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
NODE_NAME = "fake-node"
_HASH_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
# The namespace controller's namespaceDeletionGracePeriod: it empties a namespace this long
# after its deletion.
NAMESPACE_DELETION_GRACE = 5.0


def template_hash(template: Obj) -> str:
    """A stable pod-template-hash: the same template always gives the same ten characters."""
    digest = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).digest()
    return "".join(_HASH_ALPHABET[b % len(_HASH_ALPHABET)] for b in digest[:10])


def replica_set_uid(deployment_uid: str, pod_template_hash: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{deployment_uid}/{pod_template_hash}"))


def is_ready(pod: Obj) -> bool:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def deletion_cost(pod: Obj) -> int:
    """`controller.kubernetes.io/pod-deletion-cost` (0 when unset or not an integer)."""
    raw = (pod["metadata"].get("annotations") or {}).get(DELETION_COST, "0")
    try:
        return int(raw)
    except ValueError:
        return 0


def _scaled(value: Any, total: int, round_up: bool) -> int:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.endswith("%"):
        share = total * int(value[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return 0


class Controllers(ControlLoop):
    def __init__(self, store: Store, registry: Registry,
                 namespace_deletion_grace: float = NAMESPACE_DELETION_GRACE) -> None:
        super().__init__("fake controllers")
        self.store = store
        self.registry = registry
        # Seconds between a namespace's deletion and its emptying (a setting of the fake).
        self.namespace_deletion_grace = namespace_deletion_grace
        # deployment uid -> {pod-template-hash: revision}
        self._revisions: dict[str, dict[str, int]] = {}
        # namespace uid -> when the controller may start emptying it (loop time)
        self._namespace_due: dict[str, float] = {}

    def start(self) -> None:
        # Any write may matter (a namespace being emptied waits for every kind of object).
        self.store.add_listener(lambda event: self.wake())
        super().start()

    def step(self) -> None:
        """One pass over everything."""
        self._namespaces()
        for dep in self.store.items("apps/deployments"):
            self._guard(self._deployment, dep)
        self._collect_pods()
        namespaces = {ns["metadata"]["name"] for ns in self.store.items("/namespaces")}
        for ns in sorted(namespaces):
            self._guard(self._endpoint_slices, ns)

    @staticmethod
    def _guard(step: Any, *args: Any) -> None:
        # One object's failure (a namespace being deleted, a conflict) must not stop the rest;
        # the next event brings the loop back to it.
        try:
            step(*args)
        except ApiError as e:
            log.debug("fake controllers: %s", e)

    # --- namespaces ---

    def _namespaces(self) -> None:
        loop = asyncio.get_running_loop()
        for ns in self.store.items("/namespaces"):
            meta = ns["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            if meta["uid"] not in self._namespace_due:
                grace = self.namespace_deletion_grace
                self._namespace_due[meta["uid"]] = loop.time() + grace
                loop.call_later(grace, self.wake)
            if loop.time() < self._namespace_due[meta["uid"]]:
                continue
            name = meta["name"]
            left = 0
            for rt in RESOURCES:
                if not rt.namespaced:
                    continue
                for obj in self.store.items(rt.key, name):
                    left += 1
                    if not obj["metadata"].get("deletionTimestamp"):
                        with contextlib.suppress(ApiError):
                            self.registry.delete(rt, name, obj["metadata"]["name"])
            if left == 0:
                self.store.remove("/namespaces", "", name)
                del self._namespace_due[meta["uid"]]

    # --- deployments ---

    def _pods_of(self, dep: Obj) -> list[Obj]:
        meta = dep["metadata"]
        out = []
        for pod in self.store.items("/pods", meta["namespace"]):
            pmeta = pod["metadata"]
            h = (pmeta.get("labels") or {}).get("pod-template-hash", "")
            owners = {r.get("uid") for r in pmeta.get("ownerReferences") or []}
            if h and replica_set_uid(meta["uid"], h) in owners:
                out.append(pod)
        return out

    def _deployment(self, dep: Obj) -> None:
        meta, spec = dep["metadata"], dep.get("spec") or {}
        if meta.get("deletionTimestamp"):
            return
        namespace = meta["namespace"]
        template = spec.get("template") or {}
        h = template_hash(template)
        self._revision(dep, h)
        desired = int(spec.get("replicas", 1))
        pods = self._pods_of(dep)
        active = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        new = [p for p in active if p["metadata"]["labels"].get("pod-template-hash") == h]
        old = [p for p in active if p not in new]
        pod_rt = by_kind("Pod")

        def delete(victims: list[Obj]) -> None:
            for p in victims:
                with contextlib.suppress(ApiError):
                    self.registry.delete(pod_rt, namespace, p["metadata"]["name"])

        # Not-ready pods go first, then the lowest pod-deletion-cost, then the newest ones
        # (the ReplicaSet controller's order).
        def doomed(candidates: list[Obj], count: int) -> list[Obj]:
            newest_first = sorted(candidates,
                                  key=lambda p: p["metadata"].get("creationTimestamp", ""),
                                  reverse=True)
            return sorted(newest_first, key=lambda p: (is_ready(p), deletion_cost(p)))[:count]

        recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
        if recreate and any(p["metadata"]["labels"].get("pod-template-hash") != h
                            for p in pods):
            delete(old)  # Recreate: every old pod is gone before a new one starts
        else:
            if len(new) < desired:
                for _ in range(desired - len(new)):
                    self.registry.create(pod_rt, namespace, self._pod(dep, h))
            elif len(new) > desired:
                delete(doomed(new, len(new) - desired))
            ready_new = sum(1 for p in new if is_ready(p))
            keep_old = max(0, desired - ready_new)
            if len(old) > keep_old:
                delete(doomed(old, len(old) - keep_old))
        self._status(dep, h, desired)

    def _pod(self, dep: Obj, h: str) -> Obj:
        meta = dep["metadata"]
        template = copy.deepcopy((dep.get("spec") or {}).get("template") or {})
        tmeta = template.get("metadata") or {}
        rs_name = f"{meta['name']}-{h}"
        pod_meta: Obj = {
            "generateName": f"{rs_name}-",
            "namespace": meta["namespace"],
            "labels": {**(tmeta.get("labels") or {}), "pod-template-hash": h},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs_name,
                                 "uid": replica_set_uid(meta["uid"], h), "controller": True,
                                 "blockOwnerDeletion": True}],
        }
        if tmeta.get("annotations"):
            pod_meta["annotations"] = tmeta["annotations"]
        pod_spec = template.get("spec") or {}
        pod_spec["nodeName"] = NODE_NAME
        return {"apiVersion": "v1", "kind": "Pod", "metadata": pod_meta, "spec": pod_spec}

    def _revision(self, dep: Obj, h: str) -> None:
        meta = dep["metadata"]
        known = self._revisions.setdefault(meta["uid"], {})
        if not known or max(known, key=lambda k: known[k]) != h:
            # A new template, or a rollback to an older one, becomes the newest revision.
            known[h] = max(known.values(), default=0) + 1
        wanted = str(known[h])
        if (meta.get("annotations") or {}).get(REVISION) != wanted:
            def annotate(d: Obj) -> None:
                d["metadata"].setdefault("annotations", {})[REVISION] = wanted
            self.registry.mutate(by_kind("Deployment"), meta["namespace"], meta["name"],
                                 annotate)

    def _status(self, dep: Obj, h: str, desired: int) -> None:
        meta, spec = dep["metadata"], dep.get("spec") or {}
        current = self.registry.existing(by_kind("Deployment"), meta["namespace"], meta["name"])
        if current is None:
            return
        pods = [p for p in self._pods_of(dep) if not p["metadata"].get("deletionTimestamp")]
        new = [p for p in pods if p["metadata"]["labels"].get("pod-template-hash") == h]
        ready = sum(1 for p in pods if is_ready(p))
        counts = {
            "replicas": len(pods),
            "updatedReplicas": len(new),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "unavailableReplicas": max(0, desired - ready),
        }
        strategy = spec.get("strategy") or {}
        max_unavailable = 0
        if strategy.get("type") == "RollingUpdate" and desired:
            rolling = strategy.get("rollingUpdate") or {}
            max_unavailable = _scaled(rolling.get("maxUnavailable", "25%"), desired, False)
            max_surge = _scaled(rolling.get("maxSurge", "25%"), desired, True)
            if max_unavailable == 0 and max_surge == 0:
                max_unavailable = 1
        old_conditions = (current.get("status") or {}).get("conditions") or []
        rs_name = f"{meta['name']}-{h}"
        available = ready >= desired - max_unavailable
        done = len(new) == desired and ready == desired and len(pods) == desired
        conditions = [
            _condition(old_conditions, "Available", available,
                       "MinimumReplicasAvailable" if available else "MinimumReplicasUnavailable",
                       "Deployment has minimum availability." if available
                       else "Deployment does not have minimum availability."),
            _condition(old_conditions, "Progressing", True,
                       "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                       f'ReplicaSet "{rs_name}" has successfully progressed.' if done
                       else f'ReplicaSet "{rs_name}" is progressing.'),
        ]
        status: Obj = {"observedGeneration": current["metadata"].get("generation", 1)}
        status.update({k: v for k, v in counts.items() if v})  # int32 fields are omitempty
        status["conditions"] = conditions
        if current.get("status") == status:
            return

        def write(d: Obj) -> None:
            d["status"] = status
        self.registry.mutate(by_kind("Deployment"), meta["namespace"], meta["name"], write,
                             subresource="status")

    def _collect_pods(self) -> None:
        """Garbage-collect pods whose Deployment is gone (background propagation)."""
        deployments = [d["metadata"]["uid"] for d in self.store.items("apps/deployments")]
        pod_rt = by_kind("Pod")
        for pod in self.store.items("/pods"):
            pmeta = pod["metadata"]
            owners = {r.get("uid") for r in pmeta.get("ownerReferences") or []
                      if r.get("kind") == "ReplicaSet"}
            if not owners or pmeta.get("deletionTimestamp"):
                continue
            h = (pmeta.get("labels") or {}).get("pod-template-hash", "")
            if not any(replica_set_uid(uid, h) in owners for uid in deployments):
                with contextlib.suppress(ApiError):
                    self.registry.delete(pod_rt, pmeta["namespace"], pmeta["name"])

    # --- endpoint slices ---

    def _endpoint_slices(self, namespace: str) -> None:
        slice_rt = by_kind("EndpointSlice")
        services = {s["metadata"]["uid"]: s for s in self.store.items("/services", namespace)}
        pods = self.store.items("/pods", namespace)
        slices = [s for s in self.store.items(slice_rt.key, namespace)
                  if (s["metadata"].get("labels") or {}).get(MANAGED_BY) == SLICE_CONTROLLER]
        by_owner: dict[str, list[Obj]] = {}
        for s in slices:
            owner = next((r.get("uid") for r in s["metadata"].get("ownerReferences") or []
                          if r.get("kind") == "Service"), None)
            if owner in services:
                by_owner.setdefault(owner, []).append(s)
            else:
                # The Service is gone: its slices go with it.
                with contextlib.suppress(ApiError):
                    self.registry.delete(slice_rt, namespace, s["metadata"]["name"])
        for uid, svc in services.items():
            if (svc.get("spec") or {}).get("selector"):
                self._service_slices(svc, pods, by_owner.get(uid, []))

    def _service_slices(self, svc: Obj, pods: list[Obj], existing: list[Obj]) -> None:
        slice_rt = by_kind("EndpointSlice")
        meta = svc["metadata"]
        selector = from_map(svc["spec"]["selector"])
        groups: dict[str, tuple[list[Obj], list[Obj]]] = {}
        for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
            status = pod.get("status") or {}
            if not selector.matches(pod["metadata"].get("labels")) or not status.get("podIP"):
                continue
            if status.get("phase") in ("Succeeded", "Failed"):
                continue
            ports = _slice_ports(svc, pod)
            key = json.dumps(ports, sort_keys=True)
            groups.setdefault(key, (ports, []))[1].append(_endpoint(pod))
        desired: list[tuple[list[Obj] | None, list[Obj] | None]] = [
            (ports, eps) for ports, eps in groups.values()]
        if not desired:
            desired = [(None, None)]  # the placeholder slice
        leftovers = list(existing)
        pending = []
        for ports, eps in desired:
            match = next((s for s in leftovers if s.get("ports") == ports), None)
            if match is None:
                pending.append((ports, eps))
                continue
            leftovers.remove(match)
            self._write_slice(svc, match, ports, eps)
        for ports, eps in pending:
            if leftovers:
                # Reuse a slice that would be deleted rather than delete one and create another.
                self._write_slice(svc, leftovers.pop(0), ports, eps)
            else:
                self.registry.create(slice_rt, meta["namespace"], self._new_slice(svc, ports, eps))
        for s in leftovers:
            with contextlib.suppress(ApiError):
                self.registry.delete(slice_rt, meta["namespace"], s["metadata"]["name"])

    @staticmethod
    def _labels(svc: Obj) -> Obj:
        labels = dict(svc["metadata"].get("labels") or {})
        labels[SERVICE_NAME] = svc["metadata"]["name"]
        labels[MANAGED_BY] = SLICE_CONTROLLER
        if (svc.get("spec") or {}).get("clusterIP") == "None":
            labels["service.kubernetes.io/headless"] = ""
        return labels

    def _new_slice(self, svc: Obj, ports: list[Obj] | None, eps: list[Obj] | None) -> Obj:
        meta = svc["metadata"]
        return {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": self._labels(svc),
                "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": now_time()},
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": meta["name"],
                                     "uid": meta["uid"], "controller": True,
                                     "blockOwnerDeletion": True}],
            },
            "addressType": "IPv4",
            "endpoints": eps,
            "ports": ports,
        }

    def _write_slice(self, svc: Obj, current: Obj, ports: list[Obj] | None,
                     eps: list[Obj] | None) -> None:
        labels = self._labels(svc)
        if (current.get("endpoints") == eps and current.get("ports") == ports
                and current["metadata"].get("labels") == labels):
            return

        def change(s: Obj) -> None:
            s["endpoints"] = eps
            s["ports"] = ports
            s["metadata"]["labels"] = labels
            s["metadata"].setdefault("annotations", {})[
                "endpoints.kubernetes.io/last-change-trigger-time"] = now_time()
        meta = current["metadata"]
        self.registry.mutate(by_kind("EndpointSlice"), meta["namespace"], meta["name"], change)


def _condition(old: list[Obj], kind: str, status: bool, reason: str, message: str) -> Obj:
    value = "True" if status else "False"
    for c in old:
        if c.get("type") == kind and (c.get("status"), c.get("reason"), c.get("message")) == (
                value, reason, message):
            return c
    now = now_time()
    previous = next((c for c in old if c.get("type") == kind), None)
    transition = previous["lastTransitionTime"] if previous and previous.get(
        "status") == value else now
    return {"type": kind, "status": value, "lastUpdateTime": now,
            "lastTransitionTime": transition, "reason": reason, "message": message}


def _slice_ports(svc: Obj, pod: Obj) -> list[Obj]:
    """The service's ports with targetPort resolved against this pod (FindPort)."""
    out = []
    for port in (svc.get("spec") or {}).get("ports") or []:
        target = port.get("targetPort", port.get("port"))
        if isinstance(target, str):
            number = next((p.get("containerPort")
                           for c in (pod.get("spec") or {}).get("containers") or []
                           for p in c.get("ports") or []
                           if p.get("name") == target), None)
            if number is None:
                continue  # this pod does not name that port
        else:
            number = target
        entry: Obj = {"name": port.get("name", ""), "protocol": port.get("protocol", "TCP"),
                      "port": number}
        if port.get("appProtocol"):
            entry["appProtocol"] = port["appProtocol"]
        out.append(entry)
    return out


def _endpoint(pod: Obj) -> Obj:
    meta, status = pod["metadata"], pod.get("status") or {}
    serving = is_ready(pod)
    terminating = bool(meta.get("deletionTimestamp"))
    endpoint: Obj = {
        "addresses": [status["podIP"]],
        "conditions": {"ready": serving and not terminating, "serving": serving,
                       "terminating": terminating},
        "targetRef": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                      "uid": meta["uid"]},
    }
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        endpoint["nodeName"] = node
    return endpoint
