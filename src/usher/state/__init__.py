"""What must be the same in every worker: the interfaces of the global state.

Each kind of state is a `typing.Protocol`, and every operation takes the time as an argument
(`now`, on the monotonic clock: CLOCK_MONOTONIC is system-wide on Linux, so expiry times
written by one process compare in another). Two implementations exist:

- `usher.state.local`: in this process, for `--workers 1` and unit tests;
- `usher.state.shm`: shared memory among the workers of one host, with POSIX record locks
  for the check-and-change steps (the kernel drops a dead process's locks, so a worker killed
  with SIGKILL cannot block the others).

A store over the network (Redis, for a cluster) implements the same protocols. Calls that run
on every request are shaped so that it can batch them or hold local leases: the retry budget
takes deposits locally and settles them in `flush`; everything else is one call per decision.

`installed()` is the shared store of this process, when it is a worker of `usher run
--workers N` (None otherwise): pools and rate limiters built in a worker take their state
from it. `cluster()` is the link to the store shared with other nodes (`cluster:` in the
config, usher.state.redis), when there is one: what it shares comes from it first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from usher.state.redis import ClusterLink
    from usher.state.shm import SharedState

V = TypeVar("V")


class Counters(Protocol):
    """Bounded counters: requests in flight to a backend against its `max_connections`, kept
    per worker so that a dead worker's share can be given back."""

    def admit(self, row: int, worker: int, held: int, limit: int) -> bool:
        """Count one more for `worker` (which holds `held` now) if the total over every worker
        is under `limit`; False (nothing counted) when it is not."""
        ...

    def total(self, row: int) -> int:
        """The count over every worker."""
        ...


class KeyTable(Protocol[V]):
    """Key -> value with expiry: persistence by source IP or header (the value is a backend:
    in this process the object, in shared memory its row)."""

    def get(self, key: str, now: float) -> V | None:
        """The value stored for `key`, unless it expired."""
        ...

    def put(self, key: str, value: V, now: float, ttl: float) -> None:
        """Store `value` for `key` until `now + ttl`."""
        ...

    def put_if_absent(self, key: str, value: V, now: float, ttl: float) -> V:
        """Store `value` for `key` until `now + ttl` unless a live value is there, in one
        step (two workers pinning the same new key: the first pin wins). Returns the value
        stored for `key` after the call."""
        ...


class Buckets(Protocol):
    """Token buckets (rate limits); `usher.limits.RateStore` is the same call."""

    def take(self, key: str, now: float) -> float:
        """0.0 when a token was taken, else the seconds until there is one."""
        ...


class Ejections(Protocol):
    """Backends ejected by passive health or outlier detection, until when."""

    def eject(self, row: int, until: float) -> None: ...

    def ejected_until(self, row: int) -> float:
        """0.0 when the backend was never ejected."""
        ...


class Budget(Protocol):
    """The retry budget of a pool: requests deposit, retries withdraw one."""

    ratio: float  # what each request deposits

    def deposit(self) -> None: ...

    def withdraw(self) -> bool:
        """Take one retry; False when the budget is spent."""
        ...

    def flush(self) -> None:
        """Settle deposits held locally (a no-op for a store that holds none)."""
        ...


class Sequence(Protocol):
    """A counter every worker advances: the position in a round-robin schedule."""

    def next(self) -> int: ...


class WaitQueue(Protocol):
    """First in, first out across workers: requests waiting for a backend under its limit."""

    def join(self, worker: int) -> int | None:
        """A ticket at the tail; None when the queue is full."""
        ...

    def leave(self, ticket: int, worker: int) -> None:
        """The waiter gave up (timeout, client gone)."""
        ...

    def waiting(self) -> bool:
        """Whether anyone waits (a new request then queues behind them)."""
        ...

    def grant(self, worker: int) -> int | None:
        """The head ticket, when it is `worker`'s: it may now take a slot. The grant holds the
        head until `done`, so no other worker's waiter passes it meanwhile."""
        ...

    def done(self, ticket: int, worker: int) -> None:
        """The granted waiter has made its attempt: the head moves on."""
        ...


_installed: SharedState | None = None


def install(state: SharedState | None) -> None:
    """Make `state` the store of this process (a worker does at start)."""
    global _installed
    _installed = state


def installed() -> SharedState | None:
    return _installed


_cluster: ClusterLink | None = None


def install_cluster(link: ClusterLink | None) -> None:
    """Make `link` the cluster store of this process (the balancer does, before its pools)."""
    global _cluster
    _cluster = link


def cluster(share: str) -> ClusterLink | None:
    """The cluster store, if there is one and it shares `share` (rate_limits, sticky,
    ejections)."""
    link = _cluster
    return link if link is not None and share in link.share else None
