"""Bearer keys (constant-time comparison, never logged), a per-key rate limit and a limit on failed
authentications per client address (token buckets)."""
from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Sequence

AUTH_FAILURES_PER_MIN = 10  # per client address: a key guesser gets 10 tries a minute


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
    """A token bucket per key (a key id, a client address): ``per_minute`` tokens, bursts up to that many.

    Full buckets are forgotten once there are more than ``max_keys``, so addresses do not pile up."""

    def __init__(self, per_minute: int, clock=time.monotonic, max_keys: int = 100_000):
        self.rate = per_minute / 60.0
        self.capacity = float(per_minute)
        self.clock = clock
        self.max_keys = self._prune_at = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - last) * self.rate)

    def allow(self, key_id: str) -> tuple[bool, float]:
        """Take a token: (allowed, seconds until the next token when refused)."""
        now = self.clock()
        with self._lock:
            tokens = self._tokens(key_id, now)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                self._prune(now)
                return True, 0.0
            self._buckets[key_id] = (tokens, now)
            return False, (1 - tokens) / self.rate

    def wait(self, key_id: str) -> float:
        """Seconds until ``key_id`` has a token, 0.0 when it has one now; takes none."""
        with self._lock:
            tokens = self._tokens(key_id, self.clock())
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def _prune(self, now: float) -> None:
        if len(self._buckets) > self._prune_at:
            self._buckets = {k: v for k, v in self._buckets.items() if self._tokens(k, now) < self.capacity}
            self._prune_at = max(self.max_keys, 2 * len(self._buckets))  # amortized: not on every call
