"""The global state kept in this process: what `--workers 1` uses, and the reference the
shared-memory store is tested against (tests/test_state.py runs the same checks on both)."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Generic, TypeVar

V = TypeVar("V")

# Status retries start with this many in hand, whatever the budget; the bucket holds at most
# this many plus RETRY_BUDGET_ROOM requests' worth of deposits.
RETRY_BUDGET_RESERVE = 10
RETRY_BUDGET_ROOM = 100


class LocalCounters:
    """Counts per (row, worker) in a dict; one process never races itself."""

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: dict[int, dict[int, int]] = {}

    def admit(self, row: int, worker: int, held: int, limit: int) -> bool:
        cells = self._counts.setdefault(row, {})
        if sum(cells.values()) - cells.get(worker, 0) + held >= limit:
            return False
        cells[worker] = held + 1
        return True

    def release(self, row: int, worker: int) -> None:
        cells = self._counts.get(row, {})
        if cells.get(worker, 0) > 0:
            cells[worker] -= 1

    def total(self, row: int) -> int:
        return sum(self._counts.get(row, {}).values())


class LocalKeyTable(Generic[V]):
    """Key -> value with expiry, at most `size` entries (the least recently stored go)."""

    __slots__ = ("_table", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        # key -> (value, expires); most recently stored last.
        self._table: OrderedDict[str, tuple[V, float]] = OrderedDict()

    def get(self, key: str, now: float) -> V | None:
        entry = self._table.get(key)
        if entry is None:
            return None
        if now >= entry[1]:
            del self._table[key]
            return None
        return entry[0]

    def put(self, key: str, value: V, now: float, ttl: float) -> None:
        table = self._table
        table[key] = (value, now + ttl)
        table.move_to_end(key)
        while len(table) > self.size:
            table.popitem(last=False)

    def put_if_absent(self, key: str, value: V, now: float, ttl: float) -> V:
        current = self.get(key, now)
        if current is not None:
            return current
        self.put(key, value, now, ttl)
        return value

    def discard(self, key: str) -> None:
        self._table.pop(key, None)

    def __len__(self) -> int:
        return len(self._table)


class LocalEjections:
    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: dict[int, float] = {}

    def eject(self, row: int, until: float) -> None:
        if until > self._until.get(row, 0.0):
            self._until[row] = until

    def ejected_until(self, row: int) -> float:
        return self._until.get(row, 0.0)


class LocalBudget:
    """Status retries may add at most `ratio` to the requests (a token bucket: each request
    deposits `ratio`, each retry takes one), so a failing pool is not hit with a multiple of
    its load."""

    __slots__ = ("_cap", "_deposit", "_millis", "ratio")

    # Counted in thousandths of a retry, so that 100 deposits of 0.2 make exactly 20.
    def __init__(self, ratio: float) -> None:
        self.ratio = ratio
        self._deposit = round(ratio * 1000)
        self._millis = RETRY_BUDGET_RESERVE * 1000
        self._cap = (RETRY_BUDGET_RESERVE + RETRY_BUDGET_ROOM) * 1000

    def deposit(self) -> None:
        self._millis = min(self._millis + self._deposit, self._cap)

    def withdraw(self) -> bool:
        if self._millis >= 1000:
            self._millis -= 1000
            return True
        return False

    def flush(self) -> None:
        return None  # nothing is held apart


class LocalSequence:
    __slots__ = ("_next",)

    def __init__(self) -> None:
        self._next = 0

    def next(self) -> int:
        value = self._next
        self._next += 1
        return value


class LocalQueue:
    """Tickets in arrival order; a granted head holds its place until `done`."""

    __slots__ = ("_granted", "_issued", "_waiting", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._issued = 0
        self._waiting: deque[tuple[int, int]] = deque()  # (ticket, worker)
        self._granted: int | None = None

    def join(self, worker: int) -> int | None:
        if len(self._waiting) >= self.size:
            return None
        ticket = self._issued
        self._issued += 1
        self._waiting.append((ticket, worker))
        return ticket

    def leave(self, ticket: int, worker: int) -> None:
        self._waiting = deque(w for w in self._waiting if w != (ticket, worker))
        if self._granted == ticket:
            self._granted = None

    def waiting(self) -> bool:
        return bool(self._waiting)

    def grant(self, worker: int) -> int | None:
        if not self._waiting or self._granted is not None:
            return None
        ticket, owner = self._waiting[0]
        if owner != worker:
            return None
        self._granted = ticket
        return ticket

    def done(self, ticket: int, worker: int) -> None:
        self.leave(ticket, worker)


if TYPE_CHECKING:  # mypy holds each class to its protocol
    from usher import state

    _counters: type[state.Counters] = LocalCounters
    _table: type[state.KeyTable[int]] = LocalKeyTable[int]
    _ejections: type[state.Ejections] = LocalEjections
    _budget: type[state.Budget] = LocalBudget
    _sequence: type[state.Sequence] = LocalSequence
    _queue: type[state.WaitQueue] = LocalQueue
