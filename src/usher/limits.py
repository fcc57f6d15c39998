"""Rate and connection limits: token buckets per key, connection counts per address, and the
body-rate floor. Sans-IO: every decision takes the time from an injected clock.

Buckets live in a `RateStore`. `LocalRateStore` keeps them in this process (`--workers 1`);
with `--workers N` the workers share theirs in shared memory (usher.state.shm.SharedBuckets),
so a limit is exact whichever worker takes a connection; with `cluster:` the bucket is one
for every node, in Redis (usher.state.redis.ClusterBuckets), the same one method, `take`.
Connection counts (`max_connections`, `connections_per_ip` of a listener) stay per worker:
each allows its share.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Protocol

# Refilled buckets dropped at most per insert into a full table: bounded work per request.
EVICT_BATCH = 64


class RateStore(Protocol):
    """Where token buckets live."""

    def take(self, key: str, now: float) -> float:
        """Take one token from `key`'s bucket: 0.0 when there was one, else the seconds until
        there will be (the request is refused and the bucket unchanged)."""
        ...


class LocalRateStore:
    """Token buckets in a bounded table: refilled lazily on use, least recently used dropped
    first. A bucket that has had time to refill is the same as no bucket, so dropping the
    oldest loses nothing unless the table is full of active keys."""

    __slots__ = ("_buckets", "_full_after", "burst", "max_keys", "rate")

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        if rate <= 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate must be > 0, burst >= 1 and max_keys >= 1")
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._full_after = burst / rate  # an untouched bucket is full again after this
        # key -> [tokens, time of the last refill]; order: least recently used first.
        self._buckets: OrderedDict[str, list[float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> float:
        buckets = self._buckets
        bucket = buckets.get(key)
        if bucket is None:
            if len(buckets) >= self.max_keys:
                self._evict(now)
            buckets[key] = [self.burst - 1.0, now]
            return 0.0
        buckets.move_to_end(key)
        tokens = bucket[0] + (now - bucket[1]) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate

    def _evict(self, now: float) -> None:
        """Drop refilled buckets from the old end (a bounded number); if none, the least
        recently used one. Buckets are in the order of their last use, so of their last refill."""
        buckets = self._buckets
        stale: list[str] = []
        for key, bucket in buckets.items():
            if now - bucket[1] < self._full_after or len(stale) >= EVICT_BATCH:
                break
            stale.append(key)
        for key in stale:
            del buckets[key]
        if not stale:
            buckets.popitem(last=False)


def retry_after(wait: float) -> int:
    """Retry-After in whole seconds, rounded up (never 0: the client must wait)."""
    return max(1, math.ceil(wait))


def share(limit: int, workers: int) -> int:
    """A worker's share of a limit: rounded up, so that a limit is never 0."""
    return max(1, math.ceil(limit / max(1, workers)))


class ConnectionLimiter:
    """Open connections, in total and per client address."""

    __slots__ = ("by_address", "max_total", "per_address", "total")

    def __init__(self, max_total: int | None, per_address: int | None) -> None:
        self.max_total = max_total
        self.per_address = per_address
        self.total = 0
        self.by_address: dict[str, int] = {}

    def configure(self, max_total: int | None, per_address: int | None, workers: int) -> None:
        """Set the limits (at start and on reload; open connections stay counted): with
        `workers` processes, each allows its share."""
        self.max_total = share(max_total, workers) if max_total else None
        self.per_address = share(per_address, workers) if per_address else None

    @property
    def active(self) -> bool:
        """Whether there is any limit to count connections against."""
        return self.max_total is not None or self.per_address is not None

    def admit(self, address: str) -> str | None:
        """Count a new connection in, or say why not ("max_connections", "connections_per_ip")."""
        if self.max_total is not None and self.total >= self.max_total:
            return "max_connections"
        count = self.by_address.get(address, 0)
        if self.per_address is not None and count >= self.per_address:
            return "connections_per_ip"
        self.total += 1
        self.by_address[address] = count + 1
        return None

    def release(self, address: str) -> None:
        count = self.by_address.get(address, 0)
        if count <= 1:
            self.by_address.pop(address, None)
        else:
            self.by_address[address] = count - 1
        if self.total > 0:
            self.total -= 1


class BodyRateMeter:
    """Bytes of one request body against a floor, over a sliding window of whole checks.

    `check` is called every `window` seconds: the bytes received since the previous check must
    average `min_rate`. Time when usher itself was not reading (back-pressure from the backend)
    does not count against the client: such a window is skipped.
    """

    __slots__ = ("_received", "_since", "min_rate", "window")

    def __init__(self, min_rate: float, window: float, now: float) -> None:
        self.min_rate = min_rate
        self.window = window
        self._received = 0
        self._since = now

    def add(self, nbytes: int) -> None:
        self._received += nbytes

    def check(self, now: float, *, paused: bool) -> bool:
        """True while the client keeps up; starts the next window either way."""
        elapsed = now - self._since
        received = self._received
        self._received = 0
        self._since = now
        if paused or elapsed <= 0:
            return True
        return received >= self.min_rate * elapsed
