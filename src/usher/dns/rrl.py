"""Response-rate limiting against amplification (BIND's RRL, simplified): a token bucket per
client subnet (/24 for IPv4, /56 for IPv6, as BIND's default prefixes). Past its rate, a
subnet's answers are dropped, except every `slip`-th one, which goes out truncated and empty: a
real resolver, whose address was not forged, then retries over TCP, which is never limited.

Time comes from the caller (the injected clock), so that tests decide it.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import Final, Literal

Verdict = Literal["answer", "drop", "slip"]

IPV4_PREFIX: Final = 24
IPV6_PREFIX: Final = 56
# Subnets remembered at once; the least recently seen go first (a flood of forged sources
# must not grow the table without bound).
MAX_SUBNETS: Final = 100_000


def subnet_of(address: str) -> str:
    """The subnet a client is limited as."""
    ip = ipaddress.ip_address(address)
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


class _Bucket:
    __slots__ = ("at", "limited", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at
        self.limited = 0  # answers limited since the bucket last had a token


class RateLimiter:
    def __init__(self, rate: float, burst: float | None = None, slip: int = 2) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else rate
        self.slip = slip
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def check(self, client: str, now: float) -> Verdict:
        key = subnet_of(client)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _Bucket(self.burst, now)
            self._buckets[key] = bucket
            if len(self._buckets) > MAX_SUBNETS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.limited = 0
            return "answer"
        bucket.limited += 1
        if self.slip and bucket.limited % self.slip == 0:
            return "slip"
        return "drop"
