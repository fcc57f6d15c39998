"""The global state in shared memory, for the workers of one host.

The control process creates one memfd before it starts any worker and passes it to each (as
it does the table of counts, usher.shared); every worker maps it. Check-and-change steps take
a POSIX record lock (`fcntl.lockf`) on one byte of the file: one byte per backend row, per
group of table slots and per queue. The kernel releases a process's locks when it dies, so a
worker killed with SIGKILL in the middle of an update blocks nobody; what it held is given
back by the control process (`forget_worker`, and `SharedTable.clear_worker` for the counts).

Layout, in 8-byte cells:

    ejections   ROWS float64: until when the backend of that row is ejected
    queues      QUEUES x (h1, h2, issued, served, RING owners): FIFO waiters per pool
    key table   SLOTS x (h1, h2, expires, owner, a, b, n, m): buckets, sticky pins,
                round-robin positions, retry budgets; keyed by a 128-bit digest of the key

A key lives in one of SLOTS / WINDOW groups of WINDOW slots (its digest says which) and one
lock covers the group. An entry past its `expires` is free: a refilled token bucket or an
unused pin is the same as none. When a group is full, the entry that expires first goes.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from usher.shared import DEFAULT_CAPACITY

if TYPE_CHECKING:
    from usher.shared import SharedTable

SLOTS: Final = 1 << 16
WINDOW: Final = 8
GROUPS: Final = SLOTS // WINDOW
QUEUES: Final = 64
RING: Final = 1024
_CELLS: Final = 8  # per slot
_QUEUE_CELLS: Final = 4 + RING
_INF: Final = math.inf

# Lock offsets (a byte each; locks need no data behind them).
_LOCK_ROWS: Final = 0
_LOCK_GROUPS: Final = DEFAULT_CAPACITY
_LOCK_QUEUES: Final = _LOCK_GROUPS + GROUPS
_LOCK_DIRECTORY: Final = _LOCK_QUEUES + QUEUES

_PACK = struct.Struct("<qq")


class Key:
    """A key's digest and group, computed once for keys used on every request."""

    __slots__ = ("cell", "group", "h1", "h2")

    def __init__(self, text: str) -> None:
        raw = hashlib.blake2b(text.encode("utf-8", "surrogateescape"), digest_size=16).digest()
        h1, h2 = _PACK.unpack(raw)
        self.h1 = h1 | 1  # never 0, which marks a free slot
        self.h2 = h2
        self.group = (h2 & 0x7FFFFFFF) % GROUPS
        self.cell = -1  # where its entry was last found (checked before use)


class SharedState:
    """The mapped state. `fd` stays open in the control process so a restarted worker maps it."""

    def __init__(
        self, fd: int, counts: SharedTable, rows: int = DEFAULT_CAPACITY, worker: int = -1
    ) -> None:
        self.fd = fd
        self.counts = counts
        self.worker = worker  # the worker this process is (-1: the control process)
        self.rows = rows
        self._queues = rows
        self._table = rows + QUEUES * _QUEUE_CELLS
        size = (self._table + SLOTS * _CELLS) * 8
        self._map = mmap.mmap(fd, size)
        view = memoryview(self._map)
        self._q = view.cast("q")
        self._f = view.cast("d")

    @staticmethod
    def size(rows: int = DEFAULT_CAPACITY) -> int:
        return (rows + QUEUES * _QUEUE_CELLS + SLOTS * _CELLS) * 8

    @classmethod
    def create(cls, counts: SharedTable, rows: int = DEFAULT_CAPACITY) -> SharedState:
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("usher-state", 0)
        else:  # pragma: no cover - macOS and the BSDs
            fd, path = tempfile.mkstemp(prefix="usher-state-")
            os.unlink(path)
        os.ftruncate(fd, cls.size(rows))
        os.set_inheritable(fd, False)
        return cls(fd, counts, rows)

    def close(self) -> None:
        self._q.release()
        self._f.release()
        self._map.close()
        os.close(self.fd)

    # Locks

    def _lock(self, offset: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, offset)

    def _unlock(self, offset: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset)

    # Bounded counters (the cells of usher.shared's table)

    def admit(self, row: int, worker: int, held: int, limit: int) -> bool:
        counts = self.counts
        offset = _LOCK_ROWS + row
        self._lock(offset)
        try:
            if counts.active_total(row) >= limit:
                return False
            # A reservation: the worker's next publish of the backend writes the same count
            # (or corrects it, if the request never started).
            counts.active[row * counts.workers + worker] = held + 1
            return True
        finally:
            self._unlock(offset)

    def total(self, row: int) -> int:
        return self.counts.active_total(row)

    # Ejections: one float per row, written whole; the later ejection wins.

    def eject(self, row: int, until: float) -> None:
        if until > self._f[row]:
            self._f[row] = until

    def ejected_until(self, row: int) -> float:
        return self._f[row]

    def clear_row(self, row: int) -> None:
        """The row goes to another backend: it starts with no ejection."""
        self._f[row] = 0.0

    # The key table

    def _slot(self, key: Key, now: float) -> tuple[int, bool]:
        """The cell index of `key`'s live entry, or of a slot claimed for it (then True).
        Call with the group locked."""
        q, f = self._q, self._f
        base = self._table + key.group * WINDOW * _CELLS
        h1, h2 = key.h1, key.h2
        free = -1
        first = -1
        first_expiry = _INF
        for cell in range(base, base + WINDOW * _CELLS, _CELLS):
            if q[cell] == h1 and q[cell + 1] == h2:
                if f[cell + 2] > now:
                    return cell, False
                free = cell
                break
            expires = f[cell + 2]
            if free < 0 and (q[cell] == 0 or expires <= now):
                free = cell
            if expires < first_expiry or first < 0:
                first, first_expiry = cell, expires
        cell = free if free >= 0 else first
        q[cell] = h1
        q[cell + 1] = h2
        f[cell + 2] = 0.0
        q[cell + 3] = 0
        f[cell + 4] = f[cell + 5] = 0.0
        q[cell + 6] = q[cell + 7] = 0
        return cell, True

    def _find(self, key: Key, now: float) -> int:
        """The cell index of `key`'s live entry, or -1. Call with the group locked."""
        q = self._q
        base = self._table + key.group * WINDOW * _CELLS
        for cell in range(base, base + WINDOW * _CELLS, _CELLS):
            if q[cell] == key.h1 and q[cell + 1] == key.h2:
                return cell if self._f[cell + 2] > now else -1
        return -1

    def take(self, key: Key, now: float, rate: float, burst: float) -> float:
        """A token bucket: take one token, or say how long until there is one."""
        offset = _LOCK_GROUPS + key.group
        self._lock(offset)
        try:
            f = self._f
            cell, new = self._slot(key, now)
            if new:
                tokens = burst
            else:
                tokens = f[cell + 4] + (now - f[cell + 5]) * rate
                if tokens > burst:
                    tokens = burst
            f[cell + 5] = now
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / rate
            f[cell + 4] = tokens
            # Once refilled, the bucket is the same as none: the slot is free again.
            f[cell + 2] = now + (burst - tokens) / rate
            return wait
        finally:
            self._unlock(offset)

    def get(self, key: Key, now: float) -> int | None:
        offset = _LOCK_GROUPS + key.group
        self._lock(offset)
        try:
            cell = self._find(key, now)
            return None if cell < 0 else self._q[cell + 6]
        finally:
            self._unlock(offset)

    def put(self, key: Key, value: int, now: float, ttl: float) -> None:
        offset = _LOCK_GROUPS + key.group
        self._lock(offset)
        try:
            cell, _ = self._slot(key, now)
            self._q[cell + 6] = value
            self._f[cell + 2] = now + ttl
        finally:
            self._unlock(offset)

    def put_if_absent(self, key: Key, value: int, now: float, ttl: float) -> int:
        """`put` unless `key` has a live entry; returns the value stored after the call. Under
        the group's lock, so of two workers pinning a new key at once the first one wins."""
        offset = _LOCK_GROUPS + key.group
        self._lock(offset)
        try:
            cell, new = self._slot(key, now)
            if not new:
                return self._q[cell + 6]
            self._q[cell + 6] = value
            self._f[cell + 2] = now + ttl
            return value
        finally:
            self._unlock(offset)

    def next(self, key: Key) -> int:
        """A counter shared by every worker: returns its value, then adds one."""
        offset = _LOCK_GROUPS + key.group
        q = self._q
        self._lock(offset)
        try:
            cell = key.cell
            # The entry never expires, so it stays where it was unless a full group evicted it.
            if cell < 0 or q[cell] != key.h1 or q[cell + 1] != key.h2:
                cell, new = self._slot(key, 0.0)
                if new:
                    self._f[cell + 2] = _INF
                key.cell = cell
            value = q[cell + 6]
            q[cell + 6] = value + 1
            return value
        finally:
            self._unlock(offset)

    def settle(self, key: Key, deposits: int, start: int, cap: int, take: int) -> bool:
        """A shared balance (the retry budget, in thousandths): add `deposits` (at most up to
        `cap`; a new balance starts at `start`), then take `take` if it is there."""
        offset = _LOCK_GROUPS + key.group
        self._lock(offset)
        try:
            q = self._q
            cell, new = self._slot(key, 0.0)
            if new:
                self._f[cell + 2] = _INF
                q[cell + 6] = start
            balance = min(q[cell + 6] + deposits, cap)
            taken = take > 0 and balance >= take
            if taken:
                balance -= take
            q[cell + 6] = balance
            return taken
        finally:
            self._unlock(offset)

    # Queues: a ring of owners (worker + 1; negated once granted; 0 when the waiter left)

    def queue_index(self, name: str) -> int | None:
        """The queue of pool `name` (the same in every worker); None when all are taken."""
        key = Key("queue:" + name)
        q = self._q
        self._lock(_LOCK_DIRECTORY)
        try:
            empty = -1
            for index in range(QUEUES):
                base = self._queues + index * _QUEUE_CELLS
                if q[base] == key.h1 and q[base + 1] == key.h2:
                    return index
                if empty < 0 and q[base] == 0:
                    empty = index
            if empty < 0:
                return None
            base = self._queues + empty * _QUEUE_CELLS
            q[base + 2] = q[base + 3] = 0
            q[base + 1] = key.h2
            q[base] = key.h1
            return empty
        finally:
            self._unlock(_LOCK_DIRECTORY)

    def queued(self, name: str) -> int:
        """Requests waiting in pool `name`'s queue, in every worker (0 without a queue)."""
        key = Key("queue:" + name)
        q = self._q
        for index in range(QUEUES):
            base = self._queues + index * _QUEUE_CELLS
            if q[base] == key.h1 and q[base + 1] == key.h2:
                waiting = 0
                for ticket in range(q[base + 3], q[base + 2]):
                    waiting += q[base + 4 + ticket % RING] != 0
                return waiting
        return 0

    def _skip(self, base: int) -> None:
        """Move the head past waiters that left. Call with the queue locked."""
        q = self._q
        served, issued = q[base + 3], q[base + 2]
        while served < issued and q[base + 4 + served % RING] == 0:
            served += 1
        q[base + 3] = served

    @contextlib.contextmanager
    def _queue(self, index: int) -> Iterator[int]:
        """Hold queue `index`'s lock; yields where its cells start."""
        offset = _LOCK_QUEUES + index
        self._lock(offset)
        try:
            yield self._queues + index * _QUEUE_CELLS
        finally:
            self._unlock(offset)

    def join(self, index: int, worker: int, limit: int) -> int | None:
        q = self._q
        with self._queue(index) as base:
            self._skip(base)
            issued = q[base + 2]
            if issued - q[base + 3] >= min(limit, RING):
                return None
            q[base + 4 + issued % RING] = worker + 1
            q[base + 2] = issued + 1
            return issued

    def leave(self, index: int, ticket: int, worker: int) -> None:
        q = self._q
        with self._queue(index) as base:
            cell = base + 4 + ticket % RING
            if q[base + 3] <= ticket < q[base + 2] and abs(q[cell]) == worker + 1:
                q[cell] = 0
                self._skip(base)

    def waiting(self, index: int) -> bool:
        base = self._queues + index * _QUEUE_CELLS
        return self._q[base + 2] > self._q[base + 3]

    def grant(self, index: int, worker: int) -> int | None:
        q = self._q
        with self._queue(index) as base:
            self._skip(base)
            served = q[base + 3]
            cell = base + 4 + served % RING
            if served < q[base + 2] and q[cell] == worker + 1:
                q[cell] = -(worker + 1)
                return served
            return None

    def forget_worker(self, worker: int) -> None:
        """A worker died: its waiters died with it, so they leave every queue."""
        q = self._q
        for index in range(QUEUES):
            base = self._queues + index * _QUEUE_CELLS
            if q[base] == 0:
                continue
            with self._queue(index):
                for ticket in range(q[base + 3], q[base + 2]):
                    cell = base + 4 + ticket % RING
                    if abs(q[cell]) == worker + 1:
                        q[cell] = 0
                self._skip(base)


# The protocols of usher.state over one SharedState, each bound to its keys.


class SharedBuckets:
    """Token buckets of one rate limit (`prefix` names it: listener, route)."""

    __slots__ = ("_prefix", "_state", "burst", "rate")

    def __init__(self, state: SharedState, prefix: str, rate: float, burst: float) -> None:
        self._state = state
        self._prefix = prefix
        self.rate = rate
        self.burst = burst

    def take(self, key: str, now: float) -> float:
        return self._state.take(Key(self._prefix + key), now, self.rate, self.burst)


class SharedKeyTable:
    """A persistence table of one pool: key -> backend row."""

    __slots__ = ("_prefix", "_state")

    def __init__(self, state: SharedState, prefix: str) -> None:
        self._state = state
        self._prefix = prefix

    def get(self, key: str, now: float) -> int | None:
        return self._state.get(Key(self._prefix + key), now)

    def put(self, key: str, value: int, now: float, ttl: float) -> None:
        self._state.put(Key(self._prefix + key), value, now, ttl)

    def put_if_absent(self, key: str, value: int, now: float, ttl: float) -> int:
        return self._state.put_if_absent(Key(self._prefix + key), value, now, ttl)


class SharedSequence:
    __slots__ = ("_key", "_state")

    def __init__(self, state: SharedState, name: str) -> None:
        self._state = state
        self._key = Key(name)

    def next(self) -> int:
        return self._state.next(self._key)


class SharedBudget:
    """A pool's retry budget: deposits add up here (a local lease on the shared balance) and
    are settled when a retry asks, or by `flush` (the worker's state loop, every 20 ms): no
    lock on the path of a request that is not retried."""

    __slots__ = ("_cap", "_deposit", "_key", "_pending", "_start", "_state", "ratio")

    def __init__(
        self, state: SharedState, name: str, ratio: float, reserve: int, room: int
    ) -> None:
        self._state = state
        self._key = Key(name)
        self.ratio = ratio
        self._deposit = round(ratio * 1000)
        self._start = reserve * 1000
        self._cap = (reserve + room) * 1000
        self._pending = 0

    def deposit(self) -> None:
        self._pending += self._deposit

    def withdraw(self) -> bool:
        pending, self._pending = self._pending, 0
        return self._state.settle(self._key, pending, self._start, self._cap, 1000)

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0
            self._state.settle(self._key, pending, self._start, self._cap, 0)


class SharedQueue:
    """A pool's wait queue, first in first out over every worker."""

    __slots__ = ("_index", "_state", "size")

    def __init__(self, state: SharedState, index: int, size: int) -> None:
        self._state = state
        self._index = index
        self.size = size

    def join(self, worker: int) -> int | None:
        return self._state.join(self._index, worker, self.size)

    def leave(self, ticket: int, worker: int) -> None:
        self._state.leave(self._index, ticket, worker)

    def waiting(self) -> bool:
        return self._state.waiting(self._index)

    def grant(self, worker: int) -> int | None:
        return self._state.grant(self._index, worker)

    def done(self, ticket: int, worker: int) -> None:
        self._state.leave(self._index, ticket, worker)


if TYPE_CHECKING:  # mypy holds each class to its protocol
    from usher import state

    _counters: type[state.Counters] = SharedState
    _ejections: type[state.Ejections] = SharedState
    _table: type[state.KeyTable[int]] = SharedKeyTable
    _buckets: type[state.Buckets] = SharedBuckets
    _budget: type[state.Budget] = SharedBudget
    _sequence: type[state.Sequence] = SharedSequence
    _queue: type[state.WaitQueue] = SharedQueue
