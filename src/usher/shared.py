"""Per-backend counts shared by the worker processes: one table in shared memory, one slot per
(backend, worker). Each worker writes only its own slots and readers sum a backend's slots, so
no lock is needed (a reader may see a count one request old, never a torn one: each value is
one aligned 8-byte store).

The control process creates the table before it starts any worker and hands each worker its
file descriptor (a memfd on Linux). Backends get a row index from `RowIndex` in the control
process; the index travels to the workers with the backend's state.

Layout: four arrays of `capacity x workers` 8-byte cells (active, requests_total,
failures_total as int64; latency_ewma as float64); a backend's row holds its `workers` cells
side by side, so a sum reads one contiguous slice.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import tempfile
from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from usher.pool import Backend

# Rows in the table: distinct backends alive at once (all pools together), runtime additions
# included. 4096 rows x 32 bytes x workers: 128 KiB per worker, touched only where used.
DEFAULT_CAPACITY: Final = 4096
_CELL: Final = 8
_FIELDS: Final = 4


class SharedTable:
    """The table, mapped in this process. `fd` stays open so a restarted worker can map it."""

    def __init__(self, fd: int, workers: int, capacity: int) -> None:
        if workers < 1 or capacity < 1:
            raise ValueError(f"need at least one worker and one row (got {workers}, {capacity})")
        self.fd = fd
        self.workers = workers
        self.capacity = capacity
        cells = workers * capacity
        self._map = mmap.mmap(fd, cells * _CELL * _FIELDS)
        view = memoryview(self._map)
        region = cells * _CELL
        self.active = view[0:region].cast("q")
        self.requests = view[region : 2 * region].cast("q")
        self.failures = view[2 * region : 3 * region].cast("q")
        self.latency = view[3 * region : 4 * region].cast("d")

    @classmethod
    def create(cls, workers: int, capacity: int = DEFAULT_CAPACITY) -> SharedTable:
        """A new zeroed table (anonymous memory: a memfd, or an unlinked file elsewhere)."""
        size = workers * capacity * _CELL * _FIELDS
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("usher-counts", 0)
        else:  # pragma: no cover - macOS and the BSDs
            fd, path = tempfile.mkstemp(prefix="usher-counts-")
            os.unlink(path)
        os.ftruncate(fd, size)
        os.set_inheritable(fd, False)
        return cls(fd, workers, capacity)

    def slot(self, row: int, worker: int) -> Slot:
        """Where `worker` publishes the counts of the backend at `row`."""
        if not 0 <= row < self.capacity:
            raise IndexError(f"row {row} out of 0..{self.capacity - 1}")
        if not 0 <= worker < self.workers:
            raise IndexError(f"worker {worker} out of 0..{self.workers - 1}")
        return Slot(self, row * self.workers, worker)

    def active_total(self, row: int) -> int:
        base = row * self.workers
        return sum(self.active[base : base + self.workers])

    def totals(self, row: int) -> tuple[int, int, int, float]:
        """(active, requests, failures, latency) of one backend over every worker; the latency
        is the average of the workers' averages, weighted by their requests."""
        base = row * self.workers
        end = base + self.workers
        requests = self.requests[base:end]
        total_requests = sum(requests)
        latency = 0.0
        if total_requests:
            latency = (
                sum(r * lat for r, lat in zip(requests, self.latency[base:end], strict=True))
                / total_requests
            )
        return (
            sum(self.active[base:end]),
            total_requests,
            sum(self.failures[base:end]),
            latency,
        )

    def clear_worker(self, worker: int) -> None:
        """Zero every cell of one worker (it died: its requests in flight died with it)."""
        for array in (self.active, self.requests, self.failures):
            for cell in range(worker, self.capacity * self.workers, self.workers):
                array[cell] = 0
        for cell in range(worker, self.capacity * self.workers, self.workers):
            self.latency[cell] = 0.0

    def clear_row(self, row: int) -> None:
        base = row * self.workers
        for cell in range(base, base + self.workers):
            self.active[cell] = self.requests[cell] = self.failures[cell] = 0
            self.latency[cell] = 0.0

    def close(self) -> None:
        for view in (self.active, self.requests, self.failures, self.latency):
            view.release()
        with contextlib.suppress(BufferError):
            self._map.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class Slot:
    """One worker's cells for one backend. `publish` runs on every request start and end."""

    __slots__ = (
        "_active",
        "_base",
        "_cell",
        "_failures",
        "_latency",
        "_requests",
        "_width",
        "row",
        "worker",
    )

    def __init__(self, table: SharedTable, base: int, worker: int) -> None:
        self._active = table.active
        self._requests = table.requests
        self._failures = table.failures
        self._latency = table.latency
        self._base = base
        self._width = table.workers
        self._cell = base + worker
        self.row = base // table.workers
        self.worker = worker

    def publish(self, backend: Backend) -> None:
        cell = self._cell
        self._active[cell] = backend.active
        self._requests[cell] = backend.requests_total
        self._failures[cell] = backend.failures_total
        self._latency[cell] = backend.latency_ewma

    def same_cell(self, other: Slot) -> bool:
        return self._active is other._active and self._cell == other._cell

    def clear(self) -> None:
        cell = self._cell
        self._active[cell] = self._requests[cell] = self._failures[cell] = 0
        self._latency[cell] = 0.0

    def total(self) -> int:
        """Requests in flight to this backend in every worker."""
        base = self._base
        return sum(self._active[base : base + self._width])


class RowIndex:
    """The control process's map from (pool, backend) to a row of the table. Rows of removed
    backends are reused last (first in, first out), so a worker that has not yet heard of a
    removal never shares a row with a new backend."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._rows: dict[tuple[str, str], int] = {}
        self._free: deque[int] = deque()
        self._next = 0

    def get(self, pool: str, label: str) -> int | None:
        return self._rows.get((pool, label))

    def assign(self, pool: str, label: str) -> int | None:
        """The row of this backend, a new one if it has none; None when the table is full."""
        key = (pool, label)
        row = self._rows.get(key)
        if row is not None:
            return row
        if self._next < self.capacity:
            row = self._next
            self._next += 1
        elif self._free:
            row = self._free.popleft()
        else:
            return None
        self._rows[key] = row
        return row

    def keep_only(self, alive: set[tuple[str, str]]) -> list[int]:
        """Release the rows of backends no longer alive; returns them (to be zeroed)."""
        gone = [key for key in self._rows if key not in alive]
        rows = [self._rows.pop(key) for key in gone]
        self._free.extend(rows)
        return rows
