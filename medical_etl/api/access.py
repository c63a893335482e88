"""Bearer keys (constant-time comparison, never logged) and a per-key rate limit (token bucket)."""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Sequence


class KeyRing:
    """The configured keys; :meth:`identify` returns a key's opaque id, or None."""

    def __init__(self, keys: Sequence[str]):
        self._digests = [hashlib.sha256(str.__str__(k).encode()).digest() for k in keys]

    def __bool__(self) -> bool:
        return bool(self._digests)

    def identify(self, presented: str | None) -> str | None:
        if not presented:
            return None
        # Compare fixed-length digests, every key every time: timing says nothing about which matched.
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for i, d in enumerate(self._digests):
            if hmac.compare_digest(d, digest):
                found = f"key{i + 1}"
        return found


class RateLimiter:
    """A token bucket per key id: ``per_minute`` requests, bursts up to that many."""

    def __init__(self, per_minute: int, clock=time.monotonic):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key_id: str) -> tuple[bool, float]:
        """(allowed, seconds until the next token when refused)."""
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return True, 0.0
            self._buckets[key_id] = (tokens, now)
            return False, (1 - tokens) / self.rate
