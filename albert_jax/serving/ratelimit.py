"""Per-caller token buckets: ``rate`` requests per minute, bursts up to ``rate``.

Kept in each replica's memory: behind a load balancer over R replicas a key gets at most
R x its rate (the usual trade-off; the ledger in the shared database is exact)."""

from __future__ import annotations

import math
import threading
import time


class TokenBuckets:
    """One bucket per caller; :meth:`take` returns 0.0 when allowed, else seconds to wait."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, caller: str, per_minute: int) -> float:
        capacity = float(per_minute)
        refill = per_minute / 60.0  # tokens per second
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(caller, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * refill)
            if tokens >= 1.0:
                self._buckets[caller] = (tokens - 1.0, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (1.0 - tokens) / refill


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
