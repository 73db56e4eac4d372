"""API keys: made here, shown once, stored only as SHA-256 digests under state_dir."""

from __future__ import annotations

import hashlib
import os
import secrets
import time

from .statefile import read_json, write_json_atomic

KEY_PREFIX = "wg_"


def new_key() -> str:
    # 32 random bytes → 43 URL-safe characters.
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class KeyStore:
    """`keys.json`: {"<environment>/<service>": [{"sha256": hex, "created": epoch}]}."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "keys.json")
        raw = read_json(self.path, {})
        self._keys: dict[str, list[dict[str, object]]] = {
            name: list(entries) for name, entries in raw.items()
        }

    def hashes(self, environment: str, service: str) -> tuple[bytes, ...]:
        entries = self._keys.get(f"{environment}/{service}", [])
        return tuple(bytes.fromhex(str(e["sha256"])) for e in entries)

    def has_key(self, environment: str, service: str) -> bool:
        return bool(self._keys.get(f"{environment}/{service}"))

    def create(self, environment: str, service: str) -> str:
        key = new_key()
        entry = {"sha256": digest(key).hex(), "created": int(time.time())}
        self._keys.setdefault(f"{environment}/{service}", []).append(entry)
        write_json_atomic(self.path, self._keys)
        return key
