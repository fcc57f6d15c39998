"""The global state of several usher nodes, in Redis (or Valkey), over `redis.asyncio`.

The state protocols are called on the hot path and are synchronous, so nothing here makes a
request wait on the network: each node keeps a local copy that a background task keeps in
step with the store (docs/cluster.md says how stale it can be).

- Rate limits (`ClusterBuckets`): the bucket lives in Redis and a Lua script takes tokens from
  it atomically, by the store's clock (`TIME`: node clocks never compare). A node leases a
  batch of tokens per round trip and hands them out locally, asking for the next batch before
  the lease runs out. The first request of a key, before any lease, is admitted on credit,
  paid back out of the next lease, so the total over every node stays that of one bucket.
- Persistence (`ClusterKeyTable`): key -> backend address, `SET ... PX` in Redis and a local
  cache. A new pin is published to every node (pub/sub), so a client's next request finds it
  wherever it lands; a node that pins a key it has not heard of asks with `SET NX GET` and
  adopts the pin another node made. Refreshing a pin's expiry is written behind, at most once
  per `REFRESH_FRACTION` of its ttl.
- Ejections (`ClusterLink.eject`): a key with the ejection's remaining time (`PX`), and a
  message to every node, which ejects the backend for that long by its own clock.

When the store is down, slow or unreachable, each decision is made on local state (the
in-process or shared-memory store the node would use without `cluster:`): the node logs it
once, `usher_cluster_up` is 0, the link reconnects with backoff, and on its return replays
the pins and ejections made meanwhile and takes on the ejections the store holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from usher.state.local import LocalKeyTable

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from usher.clock import Clock
    from usher.config import ClusterConfig
    from usher.limits import RateStore

log = logging.getLogger("usher.cluster")

PREFIX: Final = "usher:"
PINS_CHANNEL: Final = PREFIX + "pins"
EJECTIONS_CHANNEL: Final = PREFIX + "ejections"
# Reconnection backoff, doubling from the first to the last.
BACKOFF_FIRST: Final = 0.05
BACKOFF_LAST: Final = 2.0
# A store that answers no PING for this long is down (requests stopped waiting on it long
# before, at `cluster.timeout`).
DEAD_AFTER: Final = 1.0
PING_INTERVAL: Final = 0.5
# A lease is a batch of this many seconds' worth of tokens (at least 1, at most a quarter of
# the burst); the next is asked for when half is spent; unused tokens lapse after LEASE_TTL.
LEASE_SECONDS: Final = 0.05
LEASE_TTL: Final = 1.0
# A pin's expiry is refreshed in the store at most once per this share of its ttl.
REFRESH_FRACTION: Final = 0.1
# Writes made while the store was down, replayed on its return: at most this many.
BACKLOG: Final = 10_000

# Take up to ARGV[3] tokens from the bucket KEYS[1] (rate ARGV[1]/s, burst ARGV[2]), by the
# store's clock. Returns the tokens taken and, when fewer than asked, the seconds until the
# next one (a string: Lua numbers come back truncated to integers).
TAKE_SCRIPT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local b = redis.call('HMGET', KEYS[1], 't', 'n')
local tokens = burst
if b[1] then
  tokens = math.min(burst, tonumber(b[2]) + (now - tonumber(b[1])) * rate)
end
local got = math.max(0, math.min(want, math.floor(tokens)))
tokens = tokens - got
redis.call('HSET', KEYS[1], 't', string.format('%.6f', now), 'n', string.format('%.6f', tokens))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
local wait = 0
if got < want then
  wait = (1 - tokens) / rate
end
return {got, string.format('%.6f', wait)}
"""

# Store the pin KEYS[1] = ARGV[1] for ARGV[2] ms and publish ARGV[4] on ARGV[3], in one round
# trip. With ARGV[5] == "nx" a pin another node made first stays (SET NX GET, Redis 7) and is
# returned with its remaining ms, unpublished; else nil.
PIN_SCRIPT: Final = """
if ARGV[5] == 'nx' then
  local theirs = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX', 'GET')
  if theirs then
    return {theirs, redis.call('PTTL', KEYS[1])}
  end
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return false
"""
_StoreErrors = (RedisError, OSError, TimeoutError)


class ClusterLink:
    """This process's connection to the store, and the background task that keeps the local
    copies in step with it. Built from the `cluster:` section; `start` in a running loop."""

    def __init__(self, config: ClusterConfig, clock: Clock) -> None:
        self.url = config.redis
        self.node = config.node or socket.gethostname()
        self.share = frozenset(config.share)
        self.timeout = config.timeout
        self.clock = clock
        # Who sent a message: this node and process (several workers share a node name).
        self.origin = f"{self.node}/{os.getpid()}"
        self.up = False
        self.on_ejection: Callable[[str, str, float], None] | None = None
        self.tables: dict[str, ClusterKeyTable] = {}
        self._client: aioredis.Redis | None = None
        # The Lua scripts of the buckets and the pins, once connected.
        self.take_script: Any = None
        self.pin_script: Any = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._broken: asyncio.Event | None = None
        self._down_logged = False
        self._slow_logged = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Writes made while down: store key -> (value, ttl ms, whether to keep a newer value).
        self._backlog: OrderedDict[str, tuple[str, int]] = OrderedDict()
        # Ejections made while down: (pool, backend) -> until, on this node's clock.
        self._ejections: dict[tuple[str, str], float] = {}

    # Life cycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        self._closing = True
        if self._broken is not None:
            self._broken.set()
        task, self._task = self._task, None
        if task is not None:
            # redis-py can swallow a cancellation that lands inside one of its commands
            # (Python 3.11): ask again until the task is gone.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, *_StoreErrors):
                task.result()
        for pending in list(self._tasks):
            pending.cancel()
        await self._close()
        self.up = False

    def _client_for(self) -> aioredis.Redis:
        return aioredis.Redis.from_url(
            self.url,
            socket_timeout=DEAD_AFTER,
            socket_connect_timeout=DEAD_AFTER,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST
        while not self._closing:
            try:
                await self._connect()
                backoff = BACKOFF_FIRST
                await self._serve()
            except asyncio.CancelledError:
                raise
            except _StoreErrors as exc:
                if self._closing:
                    break
                self._lost(exc)
            await self._close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_LAST)

    async def _connect(self) -> None:
        client = self._client_for()
        self._client = client
        self._broken = asyncio.Event()
        await client.ping()
        self.take_script = client.register_script(TAKE_SCRIPT)
        self.pin_script = client.register_script(PIN_SCRIPT)
        await self._catch_up(client)
        self.up = True
        self._slow_logged = False
        if self._down_logged:
            log.warning("cluster store %s is back: state is shared again", self.url)
            self._down_logged = False

    async def _serve(self) -> None:
        client, broken = self._client, self._broken
        assert client is not None and broken is not None
        pubsub: Any = client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(PINS_CHANNEL, EJECTIONS_CHANNEL)
            tasks = (
                asyncio.ensure_future(self._listen(pubsub)),
                asyncio.ensure_future(self._ping(client)),
                asyncio.ensure_future(broken.wait()),
            )
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, Exception):
                    raise outcome  # what broke the link
            raise ConnectionError("a request to the store failed")
        finally:
            with contextlib.suppress(*_StoreErrors):
                await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        while True:
            message = await pubsub.get_message(timeout=PING_INTERVAL)
            if message is not None and message.get("type") == "message":
                self._received(message["channel"], message["data"])

    async def _ping(self, client: aioredis.Redis) -> None:
        while True:
            await asyncio.sleep(PING_INTERVAL)
            # Bounded by the client's socket timeout (DEAD_AFTER). Not asyncio.wait_for: on
            # Python 3.11 it can swallow a cancellation that lands as the ping returns.
            await client.ping()

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(*_StoreErrors):
                await client.aclose()

    def _lost(self, exc: BaseException) -> None:
        """The store failed: every decision is local until it is back."""
        self.up = False
        if self._broken is not None:
            self._broken.set()
        if not self._down_logged:
            self._down_logged = True
            log.warning(
                "cluster store %s unreachable (%s): rate limits, pins and ejections are this "
                "node's own until it is back",
                self.url,
                exc or type(exc).__name__,
            )

    def slow(self) -> None:
        """A request waited `timeout` on the store and went on with local state."""
        if not self._slow_logged:
            self._slow_logged = True
            log.warning(
                "cluster store %s slower than %gs: requests use local state meanwhile",
                self.url,
                self.timeout,
            )

    def spawn(self, coro: Any) -> None:
        """Run `coro` against the store in the background; a failure breaks the link."""
        task = asyncio.get_running_loop().create_task(self._guarded(coro))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(self, coro: Any) -> None:
        try:
            await coro
        except _StoreErrors as exc:
            self._lost(exc)

    # Catching up

    async def _catch_up(self, client: aioredis.Redis) -> None:
        """Replay what was decided while the store was down, then take on its ejections."""
        if self._backlog:
            backlog, self._backlog = self._backlog, OrderedDict()
            async with client.pipeline(transaction=False) as pipe:
                for key, (value, ttl_ms) in backlog.items():
                    pipe.set(key, value, px=ttl_ms, nx=True)  # another node's newer pin wins
                await pipe.execute()
        now = self.clock.now()
        ejections, self._ejections = self._ejections, {}
        for (pool, backend), until in ejections.items():
            if until > now:
                await self._publish_ejection(client, pool, backend, until - now)
        keys = [key async for key in client.scan_iter(match=PREFIX + "ej:*", count=500)]
        for key in keys:
            ttl_ms = await client.pttl(key)
            if ttl_ms > 0:
                pool, _, backend = key[len(PREFIX) + 3 :].partition("\x00")
                self._apply_ejection(pool, backend, ttl_ms / 1000)

    # Messages from other nodes

    def _received(self, channel: str, data: str) -> None:
        try:
            message = json.loads(data)
        except ValueError:
            return
        if not isinstance(message, dict) or message.get("o") == self.origin:
            return
        with contextlib.suppress(KeyError, TypeError, ValueError):
            if channel == PINS_CHANNEL:
                table = self.tables.get(str(message["t"]))
                if table is not None:
                    table.learn(str(message["k"]), str(message["v"]), int(message["ms"]) / 1000)
            elif channel == EJECTIONS_CHANNEL:
                self._apply_ejection(str(message["p"]), str(message["b"]), message["ms"] / 1000)

    def _apply_ejection(self, pool: str, backend: str, seconds: float) -> None:
        if "ejections" in self.share and self.on_ejection is not None and seconds > 0:
            self.on_ejection(pool, backend, seconds)

    # Ejections

    def eject(self, pool: str, backend: str, until: float) -> None:
        """This node ejected `backend` of `pool` until `until` (its clock): tell every node."""
        if "ejections" not in self.share:
            return
        client = self._client
        if not self.up or client is None:
            self._ejections[(pool, backend)] = until
            return
        self.spawn(self._publish_ejection(client, pool, backend, until - self.clock.now()))

    async def _publish_ejection(
        self, client: aioredis.Redis, pool: str, backend: str, seconds: float
    ) -> None:
        ttl_ms = max(1, round(seconds * 1000))
        message = json.dumps({"o": self.origin, "p": pool, "b": backend, "ms": ttl_ms})
        async with client.pipeline(transaction=False) as pipe:
            pipe.set(f"{PREFIX}ej:{pool}\x00{backend}", self.origin, px=ttl_ms)
            pipe.publish(EJECTIONS_CHANNEL, message)
            await pipe.execute()

    # Pins

    def pin(self, table: str, key: str, value: str, ttl: float, *, new: bool) -> None:
        """Store a pin; `new`: this node had none for `key`, so one made elsewhere wins."""
        store_key = f"{PREFIX}st:{table}\x00{key}"
        ttl_ms = max(1, round(ttl * 1000))
        client = self._client
        if not self.up or client is None:
            self._backlog[store_key] = (value, ttl_ms)
            self._backlog.move_to_end(store_key)
            while len(self._backlog) > BACKLOG:
                self._backlog.popitem(last=False)
            return
        self.spawn(self._pin(table, store_key, key, value, ttl_ms, new))

    async def _pin(
        self,
        table: str,
        store_key: str,
        key: str,
        value: str,
        ttl_ms: int,
        new: bool,
    ) -> None:
        message = json.dumps({"o": self.origin, "t": table, "k": key, "v": value, "ms": ttl_ms})
        args = [value, ttl_ms, PINS_CHANNEL, message, "nx" if new else "set"]
        theirs = await self.pin_script(keys=[store_key], args=args)
        if theirs:
            # Another node pinned the key first: its pin is the cluster's.
            pinned, left_ms = theirs
            found = self.tables.get(table)
            if found is not None and pinned != value:
                found.learn(key, str(pinned), int(left_ms) / 1000)

    def refresh(self, table: str, key: str, ttl: float) -> None:
        """The pin of `key` was used: it lives `ttl` longer in the store (written behind)."""
        client = self._client
        if self.up and client is not None:
            self.spawn(client.pexpire(f"{PREFIX}st:{table}\x00{key}", max(1, round(ttl * 1000))))

    # Metrics

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.metrics_core import GaugeMetricFamily

        gauge = GaugeMetricFamily(
            "usher_cluster_up",
            "1 while the cluster store (cluster.redis) answers, else 0 (local state only).",
            labels=("node",),
        )
        gauge.add_metric([self.node], 1 if self.up else 0)
        yield gauge


class _Lease:
    __slots__ = ("expires", "pending_since", "retry_at", "tokens")

    def __init__(self) -> None:
        self.tokens = 0.0  # below 0: taken on credit, paid out of the next lease
        self.expires = 0.0
        self.pending_since: float | None = None
        self.retry_at = 0.0  # the store said there is no token before then


class ClusterBuckets:
    """The token buckets of one rate limit, shared by every node (see the module docstring);
    `local` decides while the store is down or slower than `cluster.timeout`."""

    __slots__ = (
        "_batch",
        "_leases",
        "_link",
        "_local",
        "_max_keys",
        "_prefix",
        "burst",
        "rate",
    )

    def __init__(
        self,
        link: ClusterLink,
        prefix: str,
        rate: float,
        burst: float,
        local: RateStore,
        max_keys: int,
    ) -> None:
        self._link = link
        self._prefix = f"{PREFIX}rl:{prefix}"
        self.rate = rate
        self.burst = burst
        self._local = local
        self._max_keys = max_keys
        self._batch = max(1, min(int(rate * LEASE_SECONDS), int(burst // 4)))
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    def take(self, key: str, now: float) -> float:
        link = self._link
        if not link.up:
            return self._local.take(key, now)
        leases = self._leases
        lease = leases.get(key)
        if lease is None:
            lease = leases[key] = _Lease()
            if len(leases) > self._max_keys:
                leases.popitem(last=False)
        else:
            leases.move_to_end(key)
        if now >= lease.expires and lease.tokens > 0:
            lease.tokens = 0.0  # unused for too long: those tokens lapse
        if lease.tokens >= 1.0:
            lease.tokens -= 1.0
            # Ask for the next batch before this one runs out.
            if (
                lease.tokens < self._batch / 2
                and lease.pending_since is None
                and now >= lease.retry_at
            ):
                self._fetch(key, lease, now)
            return 0.0
        if lease.pending_since is None:
            if now < lease.retry_at:
                return lease.retry_at - now
            self._fetch(key, lease, now)
        elif now - lease.pending_since > link.timeout:
            link.slow()
            return self._local.take(key, now)
        # A lease is on its way: this token is taken on credit, at most one batch's worth.
        if lease.tokens > -self._batch:
            lease.tokens -= 1.0
            return 0.0
        return 1.0 / self.rate

    def _fetch(self, key: str, lease: _Lease, now: float) -> None:
        lease.pending_since = now
        self._link.spawn(self._lease(key, lease))

    async def _lease(self, key: str, lease: _Lease) -> None:
        link = self._link
        try:
            want = self._batch + max(0, -int(lease.tokens // 1))
            take = link.take_script
            if take is None:
                return
            got, wait = await take(keys=[self._prefix + key], args=[self.rate, self.burst, want])
            now = link.clock.now()
            lease.tokens += int(got)
            if int(got) > 0:
                lease.expires = now + LEASE_TTL
            if int(got) < want:
                # The bucket is dry: ask again when a whole batch has come in, not for each
                # token (a limit under pressure costs a round trip per batch, not per request).
                lease.retry_at = now + float(wait) + (self._batch - 1) / self.rate
        finally:
            lease.pending_since = None


class ClusterKeyTable:
    """One pool's persistence table, key -> backend address, shared by every node: a local
    cache kept in step by the pins other nodes publish (see the module docstring)."""

    __slots__ = ("_cache", "_link", "name")

    def __init__(self, link: ClusterLink, name: str, size: int) -> None:
        self._link = link
        self.name = name
        # key -> (address, when this node last wrote its expiry to the store)
        self._cache: LocalKeyTable[tuple[str, float]] = LocalKeyTable(size)
        link.tables[name] = self

    def get(self, key: str, now: float) -> str | None:
        entry = self._cache.get(key, now)
        return None if entry is None else entry[0]

    def put(self, key: str, value: str, now: float, ttl: float) -> None:
        entry = self._cache.get(key, now)
        if entry is None or entry[0] != value:
            self._cache.put(key, (value, now), now, ttl)
            self._link.pin(self.name, key, value, ttl, new=entry is None)
            return
        written = entry[1]
        if now - written >= ttl * REFRESH_FRACTION:
            written = now
            self._link.refresh(self.name, key, ttl)
        self._cache.put(key, (value, written), now, ttl)

    def put_if_absent(self, key: str, value: str, now: float, ttl: float) -> str:
        """The pin this node knows for `key`, else `value`, pinned as new: the store keeps
        the pin another node made first (`SET NX GET`) and this node adopts it when the
        answer comes (the call cannot wait on the network)."""
        entry = self._cache.get(key, now)
        if entry is not None:
            return entry[0]
        self.put(key, value, now, ttl)
        return value

    def learn(self, key: str, value: str, ttl: float) -> None:
        """A pin made by another node."""
        if ttl > 0:
            now = self._link.clock.now()
            self._cache.put(key, (value, now), now, ttl)

    def __len__(self) -> int:
        return len(self._cache)


if TYPE_CHECKING:  # mypy holds each class to the protocol of usher.state it implements
    from usher import state

    _buckets: type[state.Buckets] = ClusterBuckets
    _table: type[state.KeyTable[str]] = ClusterKeyTable
