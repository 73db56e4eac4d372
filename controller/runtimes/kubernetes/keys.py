"""API key hashes of Kubernetes instances: one Secret per private instance.

The Secret `wakegate-keys-{prefix}-<service>` (`wakegate-keys-<service>` in an
environment without a prefix, or made before prefixes) in the instance's
namespace holds one entry per key, `sha256-<created>-<n>` → the key's SHA-256
digest in hex. Only digests are stored; the key itself is shown once, by
whoever asked for it. An ephemeral environment's key is one key whose digest
is in the Secret of each of its services; its Secrets go with its namespace.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from kubernetes_asyncio import client as k8s

from ...keys import KeyInfo, digest, new_key
from ...spec import key_id
from .client import KubeError, Obj, call
from .prefixes import object_name

KEYS_LABEL = "wakegate.dev/keys"
_PREFIX = "sha256-"
_WRITE_ATTEMPTS = 5


def secret_names(service: str, prefix: str) -> list[str]:
    """The names a service's key Secret may have: with the prefix first (made so), then the
    name of a Secret made before prefixes."""
    return list(dict.fromkeys([f"wakegate-keys-{object_name(service, prefix)}",
                               f"wakegate-keys-{service}"]))


def hashes_in(secret: Obj | None) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(digest_hex) for _, digest_hex in _entries(secret))


def _entries(secret: Obj | None) -> list[tuple[str, str]]:
    """(entry name, hex digest) of every key in the Secret."""
    if not secret:
        return []
    found = []
    for name, value in sorted((secret.get("data") or {}).items()):
        if not name.startswith(_PREFIX):
            continue
        try:
            digest_hex = base64.b64decode(value).decode()
            if len(bytes.fromhex(digest_hex)) == 32:
                found.append((name, digest_hex))
        except ValueError:
            continue  # not ours or damaged: never a valid key
    return found


def _created(entry: str) -> int:
    """`sha256-<created>-<digest prefix>` → created."""
    parts = entry.split("-")
    return int(parts[1]) if len(parts) > 2 and parts[1].isdigit() else 0


class SecretPlaces(Protocol):
    """Where each instance's Secret is: what the key store needs of the runtime."""

    def api_client(self) -> k8s.ApiClient: ...

    def instance_keys(self) -> Iterable[tuple[str, str]]:
        """(environment, service) of every instance found."""

    def secret_place(self, environment: str, service: str) -> tuple[str, str] | None:
        """(namespace, name) of the instance's Secret (the one to make when there is none),
        None when the environment has no namespace."""

    def secret_of(self, environment: str, service: str) -> Obj | None:
        """The instance's Secret as the informer's cache has it."""

    def secret_written(self, secret: Obj) -> None:
        """Told each Secret as written, so that a new or revoked key counts at once, before
        the watch brings the same change."""


def _new_entry() -> tuple[str, str, str]:
    """A new key, its entry name in a Secret, and the entry's value."""
    key = new_key()
    entry = f"{_PREFIX}{int(time.time())}-{digest(key).hex()[:8]}"
    return key, entry, base64.b64encode(digest(key).hex().encode()).decode()


class KubeKeyStore:
    def __init__(self, places: SecretPlaces) -> None:
        self._places = places
        # When each key was last used: kept in memory only (a Secret is not
        # rewritten for that); `keys list` shows what this controller has seen.
        self._last_used: dict[str, int] = {}

    def list(self) -> list[KeyInfo]:
        infos = []
        for environment, service in self._places.instance_keys():
            for entry, digest_hex in _entries(self._places.secret_of(environment, service)):
                ident = key_id(bytes.fromhex(digest_hex))
                infos.append(KeyInfo(ident, environment, service, _created(entry),
                                     self._last_used.get(ident)))
        return infos

    def note_used(self, uses: Mapping[str, float]) -> None:
        for ident, at in uses.items():
            self._last_used[ident] = max(self._last_used.get(ident, 0), int(at))

    def flush(self) -> None:
        return None

    def forget_environment(self, environment: str) -> None:
        """The environment is gone (its Secrets go with its namespace): forget when its keys
        were used."""
        for info in self.list():
            if info.environment == environment:
                self._last_used.pop(info.id, None)

    async def revoke_async(self, ident: str) -> tuple[str, str] | None:
        """Remove the key with this id from every Secret holding it (an ephemeral
        environment's key is in each of its services'); one (environment, service) it was
        for, None if unknown."""
        found: tuple[str, str] | None = None
        for environment, service in list(self._places.instance_keys()):
            if not any(key_id(bytes.fromhex(d)) == ident
                       for _, d in _entries(self._places.secret_of(environment, service))):
                continue
            place = self._places.secret_place(environment, service)
            if place is not None and await self._remove_entries(place, ident):
                found = found or (environment, service)
        return found

    async def _remove_entries(self, place: tuple[str, str], ident: str) -> bool:
        """Remove the key's entries from this Secret; False if it had none (any more)."""
        namespace, name = place
        api = k8s.CoreV1Api(self._places.api_client())
        for _ in range(_WRITE_ATTEMPTS):
            secret = await call(api.read_namespaced_secret, name, namespace)
            data = secret.get("data") or {}
            gone = [entry for entry, d in _entries(secret) if key_id(bytes.fromhex(d)) == ident]
            if not gone:
                return False  # revoked meanwhile
            for entry in gone:
                del data[entry]
            secret["data"] = data
            try:
                # The resourceVersion read above makes a concurrent write a 409.
                written = await call(api.replace_namespaced_secret, name, namespace, secret)
                self._places.secret_written(written)
                return True
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise KubeError(409, "Conflict", f"the Secret {namespace}/{name} kept changing")

    def hashes(self, environment: str, service: str) -> tuple[bytes, ...]:
        return hashes_in(self._places.secret_of(environment, service))

    def has_key(self, environment: str, service: str) -> bool:
        return bool(self.hashes(environment, service))

    async def create_async(self, environment: str, service: str) -> str:
        """A new key, its digest written to the Secret before the key is returned."""
        return await self.create_for_environment_async(environment, [service])

    async def create_for_environment_async(self, environment: str,
                                           services: list[str]) -> str:
        """One new key for these services of the environment, its digest written to the
        Secret of each before the key is returned."""
        places = [(service, self._places.secret_place(environment, service))
                  for service in services]
        missing = [service for service, place in places if place is None]
        if missing:
            raise LookupError(f"no instance {environment}/{missing[0]}")
        key, entry, value = _new_entry()
        for service, place in places:
            assert place is not None
            await self._add_entry(place, service, entry, value)
        return key

    async def _add_entry(self, place: tuple[str, str], service: str, entry: str,
                         value: str) -> None:
        namespace, name = place
        api = k8s.CoreV1Api(self._places.api_client())
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
                    created = await call(api.create_namespaced_secret, namespace, body)
                    self._places.secret_written(created)
                    return
                except KubeError as create_exc:
                    if create_exc.status == 409:
                        continue
                    raise
            secret.setdefault("data", {})[entry] = value
            try:
                # The resourceVersion read above makes a concurrent write a 409.
                written = await call(api.replace_namespaced_secret, name, namespace, secret)
                self._places.secret_written(written)
                return
            except KubeError as exc:
                if exc.status != 409:
                    raise
        raise KubeError(409, "Conflict", f"the Secret {namespace}/{name} kept changing")
