"""API key hashes of Kubernetes instances: one Secret per private instance.

The Secret `wakegate-keys-<service>` in the instance's namespace holds one
entry per key, `sha256-<created>-<n>` → the key's SHA-256 digest in hex. Only
digests are stored; the key itself is shown once, by whoever asked for it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

from kubernetes_asyncio import client as k8s

from ..keys import digest, new_key
from .kube_client import KubeError, Obj, call

KEYS_LABEL = "wakegate.dev/keys"
_PREFIX = "sha256-"
_WRITE_ATTEMPTS = 5


def secret_name(service: str) -> str:
    return f"wakegate-keys-{service}"


def hashes_in(secret: Obj | None) -> tuple[bytes, ...]:
    if not secret:
        return ()
    found = []
    for name, value in sorted((secret.get("data") or {}).items()):
        if not name.startswith(_PREFIX):
            continue
        try:
            found.append(bytes.fromhex(base64.b64decode(value).decode()))
        except ValueError:
            continue  # not ours or damaged: never a valid key
    return tuple(found)


class KubeKeyStore:
    def __init__(
        self,
        api_client: Callable[[], k8s.ApiClient],
        namespace_of: Callable[[str, str], str | None],
        secret_of: Callable[[str, str], Obj | None],
        written: Callable[[Obj], None],
    ) -> None:
        self._api_client = api_client
        self._namespace_of = namespace_of
        self._secret_of = secret_of
        # Told each Secret as written, so that the new key works at once,
        # before the watch brings the same change.
        self._written = written

    def hashes(self, environment: str, service: str) -> tuple[bytes, ...]:
        return hashes_in(self._secret_of(environment, service))

    def has_key(self, environment: str, service: str) -> bool:
        return bool(self.hashes(environment, service))

    async def create_async(self, environment: str, service: str) -> str:
        """A new key, its digest written to the Secret before the key is returned."""
        namespace = self._namespace_of(environment, service)
        if namespace is None:
            raise LookupError(f"no instance {environment}/{service}")
        api = k8s.CoreV1Api(self._api_client())
        key = new_key()
        entry = f"{_PREFIX}{int(time.time())}-{digest(key).hex()[:8]}"
        value = base64.b64encode(digest(key).hex().encode()).decode()
        name = secret_name(service)
        for _ in range(_WRITE_ATTEMPTS):
            try:
                secret = await call(api.read_namespaced_secret, name, namespace)
            except KubeError as exc:
                if exc.status != 404:
                    raise
                body: dict[str, Any] = {
                    "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {
                        "name": name, "namespace": namespace,
                        "labels": {KEYS_LABEL: "true"},
                        "annotations": {"wakegate.dev/service": service},
                    },
                    "data": {entry: value},
                }
                try:
                    self._written(await call(api.create_namespaced_secret, namespace, body))
                    return key
                except KubeError as create_exc:
                    if create_exc.status == 409:
                        continue
                    raise
            secret.setdefault("data", {})[entry] = value
            try:
                # The resourceVersion read above makes a concurrent write a 409.
                self._written(await call(api.replace_namespaced_secret, name, namespace, secret))
                return key
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise KubeError(409, "Conflict", f"the Secret {namespace}/{name} kept changing")
