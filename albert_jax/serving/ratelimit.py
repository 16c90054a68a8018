"""Per-caller token buckets: ``rate`` inputs per minute, bursts up to ``rate``.

A request costs one token per input (a list of 32 texts costs 32), so a limit bounds the
work a caller asks for, not the number of HTTP requests that carry it.

Kept in each replica's memory: behind a load balancer over R replicas a key gets at most
R x its rate (the usual trade-off; the ledger in the shared database is exact)."""

from __future__ import annotations

import math
import threading
import time


class TokenBuckets:
    """One bucket per caller; :meth:`take` returns 0.0 when allowed, else seconds to wait."""

    max_callers = 100_000  # buckets kept before full ones are forgotten

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[float, float]] = {}  # caller -> (tokens, last time)
        self._lock = threading.Lock()

    def take(self, caller: str, per_minute: int, n: int = 1) -> float:
        """Takes ``n`` tokens (at most ``per_minute``, the bucket's size: the caller checks)."""
        capacity = float(per_minute)
        refill = per_minute / 60.0  # tokens per second
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) >= self.max_callers:
                self._forget_full(now)
            tokens, last = self._buckets.get(caller, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * refill)
            if tokens >= n:
                self._buckets[caller] = (tokens - n, now)
                return 0.0
            self._buckets[caller] = (tokens, now)
            return (n - tokens) / refill

    def _forget_full(self, now: float) -> None:
        """Drops buckets that have refilled (lock held): a full bucket is the default, so
        forgetting it changes nothing, and many client addresses do not grow memory."""
        for caller, (_tokens, last) in list(self._buckets.items()):
            if now - last > 60.0:
                del self._buckets[caller]


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
