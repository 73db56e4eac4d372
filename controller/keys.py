"""API keys: made here, shown once, stored only as SHA-256 digests under state_dir."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .spec import API_KEY_PREFIX, key_id
from .statefile import (
    Problems,
    describe,
    fields,
    instances,
    is_epoch,
    read_state,
    write_json_atomic,
)

KEYS_FILE = "keys.json"  # under state_dir
# How often at most keys.json is written only to record when keys were last
# used (it is also written at every change and at shutdown).
LAST_USED_WRITE_INTERVAL = 60.0


def new_key() -> str:
    # 32 random bytes → 43 URL-safe characters.
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What `wakegate keys list` shows of a key: never the key, never its whole digest."""

    id: str
    environment: str
    service: str
    created: int  # Unix time
    last_used: int | None  # Unix time, None: never (as far as wakegate knows)


SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def check_keys(problems: Problems, data: Any) -> None:
    """keys.json's schema: see KeyStore."""
    for name, entries in instances(problems, data, "a list of keys"):
        if not isinstance(entries, list):
            problems.add(name, f"must be a list of keys, got {describe(entries)}")
            continue
        first: dict[str, int] = {}  # sha256 → the index it was first seen at
        for index, entry in enumerate(entries):
            where = f"{name}[{index}]"
            entry = fields(problems, where, entry, ("sha256", "created"), ("last_used",))
            if entry is None:
                continue
            sha256 = entry.get("sha256")
            if not isinstance(sha256, str) or not SHA256_HEX.fullmatch(sha256):
                if "sha256" in entry:  # (a missing one is reported by `fields`)
                    problems.add(f"{where}.sha256", "must be a SHA-256 digest: 64 lowercase "
                                 f"hex digits, got {_describe_digest(sha256)}")
            elif sha256 in first:
                problems.add(f"{where}.sha256", f"the same key as {name}[{first[sha256]}]; "
                             "keep one")
            else:
                first[sha256] = index
            if "created" in entry and not is_epoch(entry["created"]):
                problems.add(f"{where}.created", "must be a time in epoch seconds (an integer, "
                             f"0 or more), got {describe(entry['created'])}")
            if entry.get("last_used") is not None and not is_epoch(entry["last_used"]):
                problems.add(f"{where}.last_used", "must be null or a time in epoch seconds "
                             f"(an integer, 0 or more), got {describe(entry['last_used'])}")


class KeyStore:
    """`keys.json`: {"<environment>/<service>": [{"sha256": hex, "created": epoch,
    "last_used": epoch or null (optional)}]}.

    A file that is not that raises StateFileError here and is never written.
    """

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, KEYS_FILE)
        raw: dict[str, list[dict[str, Any]]] = read_state(self.path, check_keys, {})
        # Entries are kept whole (last_used included), so a write keeps them.
        self._keys = {name: list(entries) for name, entries in raw.items()}
        self._dirty = False  # last_used changed since the last write
        self._last_write = 0.0

    def hashes(self, environment: str, service: str) -> tuple[bytes, ...]:
        entries = self._keys.get(f"{environment}/{service}", [])
        return tuple(bytes.fromhex(str(e["sha256"])) for e in entries)

    def has_key(self, environment: str, service: str) -> bool:
        return bool(self._keys.get(f"{environment}/{service}"))

    def create(self, environment: str, service: str) -> str:
        key = new_key()
        entry = {"sha256": digest(key).hex(), "created": int(time.time())}
        self._keys.setdefault(f"{environment}/{service}", []).append(entry)
        self._write()
        return key

    async def create_async(self, environment: str, service: str) -> str:
        """`create`, as the key-store port has it (Kubernetes writes a Secret: it awaits)."""
        return self.create(environment, service)

    async def create_for_environment_async(self, environment: str,
                                           services: list[str]) -> str:
        """One new key valid for every one of these services of the environment (an
        ephemeral environment's): its digest is stored under each of them, in one write."""
        key = new_key()
        entry = {"sha256": digest(key).hex(), "created": int(time.time())}
        keys = dict(self._keys)
        for service in services:
            keys[f"{environment}/{service}"] = [*keys.get(f"{environment}/{service}", []),
                                                 dict(entry)]
        self._replace(keys)
        return key

    def forget_environment(self, environment: str) -> None:
        """Every key of the environment is gone (it was deleted)."""
        prefix = f"{environment}/"
        if any(name.startswith(prefix) for name in self._keys):
            self._replace({n: e for n, e in self._keys.items() if not n.startswith(prefix)})

    async def revoke_async(self, ident: str) -> tuple[str, str] | None:
        """`revoke`, as the key-store port has it."""
        return self.revoke(ident)

    def list(self) -> list[KeyInfo]:
        infos = []
        for name, entries in self._keys.items():
            environment, _, service = name.partition("/")
            for entry in entries:
                last = entry.get("last_used")
                infos.append(KeyInfo(_id(entry), environment, service, int(entry["created"]),
                                     None if last is None else int(last)))
        return infos

    def revoke(self, ident: str) -> tuple[str, str] | None:
        """Forget the key with this id, everywhere it is stored (an ephemeral environment's
        key is stored under each of its services); one (environment, service) it was for,
        None if unknown."""
        found: tuple[str, str] | None = None
        keys: dict[str, list[dict[str, Any]]] = {}
        for name, entries in self._keys.items():
            kept = [e for e in entries if _id(e) != ident]
            if len(kept) != len(entries) and found is None:
                environment, _, service = name.partition("/")
                found = environment, service
            if kept:
                keys[name] = kept
        if found is not None:
            self._replace(keys)
        return found

    def _replace(self, keys: dict[str, list[dict[str, Any]]]) -> None:
        write_json_atomic(self.path, keys)
        self._keys = keys  # only once it is on disk
        self._last_write = time.monotonic()

    def note_used(self, uses: Mapping[str, float]) -> None:
        """Record when keys (by id) were last used; written at most once a minute."""
        for entries in self._keys.values():
            for entry in entries:
                at = uses.get(_id(entry))
                if at is not None and int(at) > int(entry.get("last_used") or 0):
                    entry["last_used"] = int(at)
                    self._dirty = True
        if self._dirty and time.monotonic() - self._last_write >= LAST_USED_WRITE_INTERVAL:
            self._write()

    def flush(self) -> None:
        """Write what `note_used` has not written yet (at shutdown)."""
        if self._dirty:
            self._write()

    def _write(self) -> None:
        write_json_atomic(self.path, self._keys)
        self._dirty = False
        self._last_write = time.monotonic()


def _describe_digest(value: object) -> str:
    """As `describe`, but never a whole digest-like string: its first 12 characters."""
    if isinstance(value, str) and len(value) > 12:
        return f'a string of {len(value)} characters, "{value[:12]}..."'
    return describe(value)


def _id(entry: Mapping[str, Any]) -> str:
    return key_id(bytes.fromhex(str(entry["sha256"])))
