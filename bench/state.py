"""Cost per operation of the shared-memory state (usher.state.shm) against the in-process one
(usher.state.local): counter admit + release, key table get / put, token bucket take, the
round-robin sequence, in CPU time. Runs in one process (the lock is uncontended; a contended
lock costs the waiting worker its wait, not more system calls).

    python bench/state.py [--ops 200000] [--json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from usher.limits import LocalRateStore
from usher.shared import SharedTable
from usher.state import local
from usher.state.shm import SharedBuckets, SharedKeyTable, SharedSequence, SharedState


def per_op(fn: Callable[[int], object], ops: int) -> float:
    """CPU nanoseconds (user + system, this process) per call of `fn`, best of three runs: on
    a busy machine the time other processes take does not count."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time_ns()
        for i in range(ops):
            fn(i)
        best = min(best, (time.process_time_ns() - start) / ops)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ops = args.ops
    table = SharedTable.create(4)
    shm = SharedState.create(table)
    slot = table.slot(5, 1)
    local_counters = local.LocalCounters()

    def shm_admit_release(_: int) -> None:
        shm.admit(5, 1, 0, 1000)
        table.active[5 * 4 + 1] = 0  # the release: the worker's publish, one store

    def local_admit_release(_: int) -> None:
        local_counters.admit(5, 1, 0, 1000)
        local_counters.release(5, 1)

    keys = [f"10.0.{i // 256 % 256}.{i % 256}" for i in range(4096)]
    sticky = SharedKeyTable(shm, "st:p:")
    local_sticky = local.LocalKeyTable[int](10_000)
    buckets = SharedBuckets(shm, "rl:web:", 1e9, 1e9)
    local_buckets = LocalRateStore(1e9, 1e9, 10_000)
    sequence = SharedSequence(shm, "rr:p")
    local_sequence = local.LocalSequence()
    now = time.monotonic()
    rows: dict[str, tuple[float, float]] = {
        "counter admit + release": (
            per_op(local_admit_release, ops),
            per_op(shm_admit_release, ops),
        ),
        "table put": (
            per_op(lambda i: local_sticky.put(keys[i & 4095], 1, now, 60.0), ops),
            per_op(lambda i: sticky.put(keys[i & 4095], 1, now, 60.0), ops),
        ),
        "table get": (
            per_op(lambda i: local_sticky.get(keys[i & 4095], now), ops),
            per_op(lambda i: sticky.get(keys[i & 4095], now), ops),
        ),
        "bucket take": (
            per_op(lambda i: local_buckets.take(keys[i & 4095], now), ops),
            per_op(lambda i: buckets.take(keys[i & 4095], now), ops),
        ),
        "round-robin sequence": (
            per_op(lambda i: local_sequence.next(), ops),
            per_op(lambda i: sequence.next(), ops),
        ),
    }
    del slot
    shm.close()
    table.close()
    if args.json:
        print(json.dumps({k: {"local_ns": a, "shm_ns": b} for k, (a, b) in rows.items()}))
        return
    print(f"{'operation':<26}{'local ns/op':>12}{'shm ns/op':>12}")
    for name, (a, b) in rows.items():
        print(f"{name:<26}{a:>12.0f}{b:>12.0f}")


if __name__ == "__main__":
    main()
