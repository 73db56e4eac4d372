"""Thin helpers over kubernetes-asyncio: raw JSON calls and watches that survive the API server.

Objects stay plain dicts, as on the wire: the controller reads a few fields
and never needs the generated models (nor their cost per watch event).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from common.backoff import Backoff

from .prefixes import version_of_tag

log = logging.getLogger("wakegate.kubernetes")

Obj = dict[str, Any]
ObjKey = tuple[str, str]  # (namespace or "", name)

_WATCH_SECONDS = 240  # the server ends a watch after this; we resume from its last version
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0


class KubeError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class Gone(KubeError):
    """410: the resourceVersion is older than the server's history; list again."""


async def connect(kubeconfig: str | None) -> k8s.ApiClient:
    """In-cluster config when there is one and no file is named, else the kubeconfig."""
    configuration = k8s.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass
    await k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return k8s.ApiClient(configuration)


# No call may hang: a stuck renewal would keep a controller acting without its Lease.
CALL_TIMEOUT = 10.0


async def call(func: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Obj:
    """One API call; the body as a dict, or KubeError (status 0: the server was not reached)."""
    kwargs.setdefault("_request_timeout", CALL_TIMEOUT)
    try:
        async with asyncio.timeout(kwargs["_request_timeout"]):
            resp = await func(*args, _preload_content=False, **kwargs)
            try:
                raw = await resp.read()
            finally:
                resp.release()
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise KubeError(0, "Unreachable", f"{type(exc).__name__}: {exc}") from None
    if not 200 <= resp.status < 300:
        raise _error(resp.status, raw)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise KubeError(resp.status, "BadResponse", "the answer is not JSON") from None


def _error(status: int, raw: bytes | Obj) -> KubeError:
    body: Any = raw
    if isinstance(raw, bytes):
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"message": raw.decode(errors="replace")[:200]}
    if not isinstance(body, dict):
        body = {}
    cls = Gone if status == 410 else KubeError
    return cls(status, str(body.get("reason", "")), str(body.get("message", "")))


def format_micro_time(wall: float) -> str:
    """A wall-clock time as the API's MicroTime (RFC 3339, microseconds, UTC)."""
    return dt.datetime.fromtimestamp(wall, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_micro_time(value: str | None) -> float | None:
    """Wall-clock seconds of an RFC 3339 time, or None when absent or unreadable."""
    if not value:
        return None
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def key_of(obj: Obj) -> ObjKey:
    meta = obj.get("metadata", {})
    return (meta.get("namespace", ""), meta.get("name", ""))


class Informer:
    """A local cache of one kind of object, kept by list + watch.

    It resumes a broken watch from the last resourceVersion it saw, lists
    again on 410 Gone (telling `on_change` about whatever changed meanwhile),
    and backs off with jitter while the API server is unreachable. `synced`
    is set once the first list is in the cache.
    """

    def __init__(
        self,
        name: str,
        list_func: Callable[..., Awaitable[Any]],
        on_change: Callable[[], None],
        label_selector: str | None = None,
    ) -> None:
        self.name = name
        self._list = list_func
        self._on_change = on_change
        self._selector = label_selector
        self.cache: dict[ObjKey, Obj] = {}
        self.synced = asyncio.Event()

    def _kwargs(self) -> dict[str, Any]:
        return {"label_selector": self._selector} if self._selector else {}

    async def run(self) -> None:
        backoff = Backoff(_BACKOFF_FIRST, _BACKOFF_MAX)
        failing = False
        while True:
            try:
                version = await self._relist()
                if failing:
                    log.info("%s: watching again", self.name)
                failing = False
                backoff.reset()
                while True:
                    began = time.monotonic()
                    version = await self._watch(version)
                    if time.monotonic() - began < 1.0:
                        # Ended at once (a proxy or load balancer closing it):
                        # never spin; the next watch resumes from `version`.
                        await asyncio.sleep(backoff.next())
                    else:
                        backoff.reset()
            except asyncio.CancelledError:
                raise
            except Gone:
                log.info("%s: resourceVersion expired (410): listing again", self.name)
                continue
            except Exception as exc:  # the API server is away or failing: retry
                if not failing:
                    log.warning("%s: %s; retrying with back-off", self.name, exc)
                failing = True
                await asyncio.sleep(backoff.next())

    async def _relist(self) -> str:
        body = await call(self._list, **self._kwargs())
        fresh: dict[ObjKey, Obj] = {}
        for item in body.get("items") or []:
            fresh[key_of(item)] = item
        changed = fresh != self.cache
        self.cache = fresh
        self.synced.set()
        if changed:
            self._on_change()
        return str(body.get("metadata", {}).get("resourceVersion", ""))

    async def _watch(self, version: str) -> str:
        """Follow events from `version` until the server ends the watch; the last version seen."""
        resp = await self._list(
            watch=True,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=_WATCH_SECONDS,
            _preload_content=False,
            _request_timeout=_WATCH_SECONDS + 30,
            **self._kwargs(),
        )
        try:
            if resp.status != 200:
                raise _error(resp.status, await resp.read())
            async for line in resp.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise _error(int(obj.get("code") or 500), obj)
                meta = obj.get("metadata", {})
                version = str(meta.get("resourceVersion", version))
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self.cache.pop(key_of(obj), None)
                elif kind in ("ADDED", "MODIFIED"):
                    self.cache[key_of(obj)] = obj
                else:
                    continue
                self._on_change()
        finally:
            resp.release()
        return version


VERSION_ANNOTATION = "wakegate.dev/version"


def deployment_version(deployment: Obj, prefix: str = "") -> str:
    """`wakegate.dev/version`, else the image tag (without the environment's prefix:
    `1.0.0-prod` is version 1.0.0)."""
    annotations = deployment.get("metadata", {}).get("annotations") or {}
    return str(annotations.get(VERSION_ANNOTATION)
               or version_of_tag(image_tag(deployment), prefix))


def image_tag(deployment: Obj) -> str:
    """The tag of the first container's image ("latest" when it has none)."""
    containers = (((deployment.get("spec") or {}).get("template") or {}).get("spec") or {}) \
        .get("containers") or []
    image = containers[0].get("image", "") if containers else ""
    tail = image.rsplit("/", 1)[-1]
    return tail.split(":", 1)[1].split("@", 1)[0] if ":" in tail else "latest"


def image_repository(image: str) -> str:
    """The image without its tag or digest (a registry's port is not a tag)."""
    image = image.split("@", 1)[0]
    head, _, tail = image.rpartition("/")
    name = tail.split(":", 1)[0]
    return f"{head}/{name}" if head else name
