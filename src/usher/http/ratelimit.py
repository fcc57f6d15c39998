"""Rate limits of a listener or a route: one token bucket per key, in this process, shared by
the workers (usher.state) or by the cluster (usher.state.redis)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.limits import LocalRateStore, RateStore
from usher.state import cluster, installed
from usher.state.redis import ClusterBuckets
from usher.state.shm import SharedBuckets

if TYPE_CHECKING:
    from usher.config import RateLimitFields
    from usher.http.codec import Request


class RateLimiter:
    """One token bucket per key, for a listener or a route."""

    __slots__ = ("kind", "name", "signature", "store")

    def __init__(self, key: str, store: RateStore, signature: tuple[object, ...] = ()) -> None:
        self.kind, _, name = key.partition(":")
        self.name = name.lower().encode("latin-1")
        self.store = store
        self.signature = signature  # what the buckets depend on: equal means reusable

    @classmethod
    def build(
        cls,
        fields: RateLimitFields,
        workers: int,
        table_size: int,
        previous: RateLimiter | None = None,
        scope: str = "",
    ) -> RateLimiter | None:
        """The limiter `fields` configure; `previous` itself (its buckets full or empty as they
        are) when a reload left its rate, burst, key and table size as they were.

        In a worker of `--workers N` the buckets are shared by every worker (usher.state),
        under `scope` (the listener, the route): the limit is exact whichever worker takes a
        connection. Otherwise (one process, or no shared state) the buckets are this
        process's, with 1/`workers` of the rate. With `cluster:` sharing rate limits, the
        bucket is the cluster's (usher.state.redis), and the store above decides only while
        Redis is down or slow."""
        if fields.rate is None:
            return None
        burst = fields.burst if fields.burst is not None else max(1.0, fields.rate)
        shared = installed()
        link = cluster("rate_limits")
        signature: tuple[object, ...]
        store: RateStore
        if shared is not None:
            signature = ("shared", scope, fields.key, fields.rate, burst)
            store = SharedBuckets(shared, f"rl:{scope}:", fields.rate, burst)
        else:
            rate = fields.rate / workers
            local_burst = max(1.0, burst / workers)
            signature = (fields.key, rate, local_burst, table_size)
            store = LocalRateStore(rate, local_burst, table_size)
        if link is not None:
            # One bucket for every node; the store above decides while Redis is away.
            signature = ("cluster", scope, *signature)
            store = ClusterBuckets(link, f"{scope}:", fields.rate, burst, store, table_size)
        if previous is not None and previous.signature == signature:
            return previous
        return cls(fields.key, store, signature)

    def key(self, request: Request, client_ip: str) -> str:
        kind = self.kind
        if kind == "source_ip":
            return client_ip
        if kind == "route":
            return ""
        name = self.name
        if kind == "header":
            for n, v in request.headers:
                if n.lower() == name:
                    return "h:" + v.decode("latin-1")
        else:
            for n, v in request.headers:
                if n.lower() == b"cookie":
                    for part in v.split(b";"):
                        k, _, value = part.strip().partition(b"=")
                        if k.lower() == name:
                            return "c:" + value.decode("latin-1")
        return (
            client_ip  # no such header or cookie: the client address, so omitting it is no way out
        )
