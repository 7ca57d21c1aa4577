"""What a token's verification established, remembered until the token expires (JWT-SVIDs, task tokens).

Agents present the same token on every call until it expires, and a signature check is the
costliest step of those calls. An entry is keyed by the token's SHA-256 and used only while the
key material that verified it is still the very object its source returns (a rotated bundle, a
reloaded or removed signing key ends it on the next call). Only successes are kept: a rejected
token is verified again each time, since its reason may change.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

V = TypeVar("V")


@dataclass(frozen=True)
class _Entry(Generic[V]):
    value: V
    verifier: object  # the bundle or key that verified it
    source_key: Any  # what the source looks that verifier up by (a trust domain, a key id)
    expires: float


class VerifiedCache(Generic[V]):
    """Verified results by token digest until their ``exp``, while their verifier is current."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: OrderedDict[bytes, _Entry[V]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(token: str) -> bytes:
        return hashlib.sha256(token.encode()).digest()

    def get(self, key: bytes, current: Callable[[Any], object]) -> V | None:
        """The remembered result, or None; ``current(source_key)`` is the verifier in use now."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if entry.expires <= time.time():
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
        if current(entry.source_key) is not entry.verifier:
            with self._lock:
                self._entries.pop(key, None)
            return None
        return entry.value

    def put(self, key: bytes, value: V, verifier: object, source_key: Any, expires: float) -> None:
        if self._max <= 0:
            return
        with self._lock:
            self._entries[key] = _Entry(value, verifier, source_key, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)
