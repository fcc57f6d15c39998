"""The workers' counts, in the control process: each backend's row of the shared table
(usher.shared) summed into its live `Backend`, and the totals of workers that died kept, so
that a backend's totals never go backwards when a worker is replaced."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from usher.pool import Backend, Pool
    from usher.shared import RowIndex, SharedTable

Key = tuple[str, str]  # (pool, backend address)


class Counts:
    """The rows of the shared table, read into the control process's pools."""

    def __init__(self, table: SharedTable, rows: RowIndex) -> None:
        self.table = table
        self.rows = rows
        # Requests and failures of workers that died, per backend.
        self.retired: dict[Key, tuple[int, int]] = {}

    def read_into(self, pools: Mapping[str, Pool]) -> None:
        """Every backend's requests in flight, totals and latency, summed over the workers; a
        drain ends when the sum reaches 0."""
        for key, backend, row in self._rows(pools):
            active, requests, failures, latency = self.table.totals(row)
            retired = self.retired.get(key, (0, 0))
            backend.active = active
            backend.requests_total = requests + retired[0]
            backend.failures_total = failures + retired[1]
            backend.latency_ewma = latency
            if backend.drained is not None and active == 0:
                backend.drained.set()

    def retire_worker(self, pools: Mapping[str, Pool], number: int) -> None:
        """A dead worker's requests in flight are gone: keep its totals, clear its cells."""
        table = self.table
        for key, _, row in self._rows(pools):
            cell = row * table.workers + number
            requests, failures = self.retired.get(key, (0, 0))
            self.retired[key] = (requests + table.requests[cell], failures + table.failures[cell])
        table.clear_worker(number)

    def _rows(self, pools: Mapping[str, Pool]) -> Iterator[tuple[Key, Backend, int]]:
        """Every backend that has a row, with its key and row."""
        for name, pool in pools.items():
            for backend in pool.backends:
                row = self.rows.get(name, backend.label)
                if row is not None:
                    yield (name, backend.label), backend, row

    def keep_only(self, pools: Mapping[str, Pool]) -> list[int]:
        """Free the rows of backends gone from every pool (once the workers have been told);
        returns them, cleared."""
        alive = {(name, b.label) for name, pool in pools.items() for b in pool.backends}
        freed = self.rows.keep_only(alive)
        for row in freed:
            self.table.clear_row(row)
        for key in [k for k in self.retired if k not in alive]:
            del self.retired[key]
        return freed
