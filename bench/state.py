"""Cost per operation of the shared-memory state (usher.state.shm) against the in-process one
(usher.state.local): counter admit + release, key table get / put, token bucket take, the
round-robin sequence, in CPU time. Runs in one process (the lock is uncontended; a contended
lock costs the waiting worker its wait, not more system calls).

    python bench/state.py [--ops 200000] [--json]

With `--per-request`, what the shared state costs a whole request instead: `usher run
--workers 2` once per pool variant (least_connections alone; with a backend
`max_connections`; with `sticky: source_ip`; with a listener rate limit; round_robin), all
running at once against one `usher backend`, and wrk against each in turn, the order rotated
every round. The figure is the CPU time of usher's processes per request (a busy machine's
other work does not count), and each variant's ratio to the plain one in the same round.

    python bench/state.py --per-request [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from algorithms import free_port, running
from harness import cpu_us_per_request, parse_wrk, tree_cpu_seconds

from usher.limits import LocalRateStore
from usher.shared import SharedTable
from usher.state import local
from usher.state.shm import SharedBuckets, SharedKeyTable, SharedSequence, SharedState

USHER = [sys.executable, "-m", "usher"]
# name: (algorithm, what the backend adds, what the pool adds, what the listener adds)
VARIANTS: dict[str, tuple[str, str, str, str]] = {
    "plain": ("least_connections", "", "", ""),
    "max_connections": ("least_connections", ", max_connections: 100000", "", ""),
    "sticky": ("least_connections", "", ", sticky: {type: source_ip}", ""),
    "rate": ("least_connections", "", "", ", limits: {rate: 1000000/s, burst: 1000000}"),
    "round_robin": ("round_robin", "", "", ""),
}


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


def variant_config(name: str, port: int, backend_port: int) -> str:
    algorithm, backend, pool, listener = VARIANTS[name]
    return (
        f"listeners: [{{name: web, bind: 127.0.0.1:{port}, pool: p{listener}}}]\n"
        f"pools: {{p: {{algorithm: {algorithm}, "
        f"backends: [{{address: 127.0.0.1:{backend_port}{backend}}}]{pool}}}}}\n"
    )


def wrk(port: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", "-c8", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 30,
    ).stdout
    return parse_wrk(out)


def per_request(rounds: int, seconds: int) -> dict[str, dict[str, float]]:
    """Per variant: the median CPU µs per request and requests per second over the rounds,
    and the median of its per-round ratio to `plain`."""
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    ratios: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as work, ExitStack() as stack:
        backend_port = free_port()
        stack.enter_context(
            running(
                [*USHER, "backend", "--port", str(backend_port)],
                backend_port,
                Path(work) / "backend.log",
                60,
            )
        )
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for name in VARIANTS:
            port = free_port()
            config = Path(work) / f"{name}.yaml"
            config.write_text(variant_config(name, port, backend_port))
            cmd = [*USHER, "run", "-c", str(config), "--workers", "2", "--no-access-log"]
            pids[name] = stack.enter_context(running(cmd, port, Path(work) / f"{name}.log", 60)).pid
            ports[name] = port
            wrk(port, 1)  # warm-up
        names = list(VARIANTS)
        for round_ in range(rounds):
            order = names[round_ % len(names) :] + names[: round_ % len(names)]
            costs: dict[str, float] = {}
            for name in order:
                before = tree_cpu_seconds(pids[name])
                result = wrk(ports[name], seconds)
                after = tree_cpu_seconds(pids[name])
                costs[name] = cpu_us_per_request(before, after, result["requests"])
                samples[name].append((costs[name], result["rps"]))
            for name in names:
                ratios[name].append(costs[name] / costs["plain"])
    return {
        name: {
            "cpu_us_per_request": statistics.median(c for c, _ in samples[name]),
            "rps": statistics.median(r for _, r in samples[name]),
            "ratio_to_plain": statistics.median(ratios[name]),
            "ratio_min": min(ratios[name]),
            "ratio_max": max(ratios[name]),
        }
        for name in names
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--per-request", action="store_true", help="whole requests, --workers 2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    if args.per_request:
        found = per_request(args.rounds, args.seconds)
        if args.json:
            print(json.dumps(found))
            return
        print(f"{'variant':<18}{'CPU us/req':>11}{'req/s':>9}{'ratio':>7}{'range':>13}")
        for name, row in found.items():
            span = f"{row['ratio_min']:.2f}-{row['ratio_max']:.2f}"
            print(
                f"{name:<18}{row['cpu_us_per_request']:>11.0f}{row['rps']:>9.0f}"
                f"{row['ratio_to_plain']:>7.2f}{span:>13}"
            )
        return
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
