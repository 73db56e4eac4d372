"""The runtime's view of the cluster for its stores: where each instance's objects are.

KubernetesRuntime inherits this view; the key store (keys.SecretPlaces) and
the ephemeral store (ephemeral.EphemeralPlaces) ask it where an instance's
Deployment, namespace and key Secret are, and tell it about their own writes,
which go into the informers' caches at once (the watch brings the same change
later), followed by discovery. It also shows the image tag a Deployment runs,
for `wakegate status`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ...model import Key
from ...spec import EPHEMERAL, Environment
from ..base import RuntimeEvents
from .client import Informer, Obj, ObjKey, image_tag, key_of
from .discovery import Placement
from .ephemeral_records import ENVIRONMENT_LABEL, being_deleted, is_ephemeral
from .keys import KubeKeyStore, secret_names

__all__ = ["ClusterView"]


class ClusterView:
    # Set by KubernetesRuntime (at open, for the informers).
    _events: RuntimeEvents | None
    _placements: dict[Key, Placement]
    _prefixes: dict[str, str]  # environment → its prefix, as discovered
    _environments: dict[str, Environment]  # namespace → the environment it is, as discovered
    _key_digests: dict[Key, tuple[bytes, ...]]
    _informers: list[Informer]
    _namespaces: Informer
    _deployments: Informer
    _secrets: Informer
    keys: KubeKeyStore

    def _changed(self) -> None:
        raise NotImplementedError

    # --- for the ephemeral store ---

    def namespace_cache(self) -> dict[ObjKey, Obj]:
        return self._namespaces.cache

    def ephemeral_namespaces(self) -> list[Obj]:
        """The namespaces discovery took for ephemeral environments (one that claims another
        environment's name, or has a name no environment may have, is none)."""
        cache = self._namespaces.cache
        return [cache[("", namespace)] for namespace, env in self._environments.items()
                if env.kind == EPHEMERAL and ("", namespace) in cache]

    def deployment_cache(self) -> Mapping[ObjKey, Obj]:
        return self._deployments.cache

    def placement_of(self, key: Key) -> Placement | None:
        return self._placements.get(key)

    def objects_written(self, namespaces: list[Obj], deployments: list[Obj]) -> None:
        for obj in namespaces:
            self._namespaces.cache[key_of(obj)] = obj
        for obj in deployments:
            self._deployments.cache[key_of(obj)] = obj
        self._changed()

    # --- for the key store: a Secret per instance ---

    def instance_keys(self) -> Iterable[Key]:
        return self._placements.keys()

    def _sync_keys(self) -> None:
        for key in self._placements:
            digests = self.keys.hashes(*key)
            if self._key_digests.get(key, ()) != digests:
                self._key_digests[key] = digests
                if self._events is not None:
                    self._events.keys_changed(key)

    def secret_written(self, secret: Obj) -> None:
        self._secrets.cache[key_of(secret)] = secret
        self._sync_keys()

    def namespace_of(self, environment: str, service: str) -> str | None:
        """The namespace of the instance; of its environment when it is an ephemeral one
        just made, whose instances discovery has not found yet (its key is made first)."""
        placement = self._placements.get((environment, service))
        if placement is not None:
            return placement.namespace
        if not self._informers:
            return None
        return next((name for (_, name), obj in self._namespaces.cache.items()
                     if is_ephemeral(obj) and not being_deleted(obj)
                     and obj["metadata"]["labels"].get(ENVIRONMENT_LABEL) == environment),
                    None)

    def secret_place(self, environment: str, service: str) -> tuple[str, str] | None:
        namespace = self.namespace_of(environment, service)
        if namespace is None:
            return None
        names = secret_names(service, self._prefixes.get(environment, ""))
        cache = self._secrets.cache
        return namespace, next((n for n in names if (namespace, n) in cache), names[0])

    def secret_of(self, environment: str, service: str) -> Obj | None:
        if not self._informers:
            return None
        place = self.secret_place(environment, service)
        return self._secrets.cache.get(place) if place is not None else None

    # --- for status ---

    def image_tag(self, key: Key) -> str | None:
        """The image tag the instance's (live) Deployment runs, as the cluster has it."""
        placement = self._placements.get(key)
        deployment = self._deployments.cache.get(placement.where) if placement else None
        return image_tag(deployment) if deployment is not None else None
