"""The global state's two stores answer alike (usher.state.local, usher.state.shm), and the
shared one holds across processes: a lock held by a process killed with SIGKILL blocks nobody."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from usher.shared import SharedTable
from usher.state import local
from usher.state.shm import (
    SharedBudget,
    SharedKeyTable,
    SharedQueue,
    SharedSequence,
    SharedState,
)


@pytest.fixture
def shm() -> Iterator[SharedState]:
    table = SharedTable.create(4, capacity=16)
    state = SharedState.create(table, rows=16)
    yield state
    state.close()
    table.close()


@pytest.fixture(params=["local", "shm"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def counters(kind: str, shm: SharedState) -> Any:
    return local.LocalCounters() if kind == "local" else shm


def test_counters_admit_up_to_the_limit_over_every_worker(kind: str, shm: SharedState) -> None:
    c = counters(kind, shm)
    assert c.admit(3, 0, 0, 2)
    assert c.admit(3, 1, 0, 2)
    assert not c.admit(3, 2, 0, 2)
    assert c.total(3) == 2
    assert c.total(4) == 0


def test_a_key_table_forgets_at_expiry(kind: str, shm: SharedState) -> None:
    table: Any = local.LocalKeyTable[int](100) if kind == "local" else SharedKeyTable(shm, "p:")
    assert table.get("10.0.0.1", 0.0) is None
    table.put("10.0.0.1", 7, 0.0, 5.0)
    assert table.get("10.0.0.1", 4.9) == 7
    assert table.get("10.0.0.2", 4.9) is None
    assert table.get("10.0.0.1", 5.0) is None
    table.put("10.0.0.1", 8, 6.0, 5.0)
    assert table.get("10.0.0.1", 7.0) == 8


def test_put_if_absent_keeps_the_first_live_value(kind: str, shm: SharedState) -> None:
    table: Any = local.LocalKeyTable[int](100) if kind == "local" else SharedKeyTable(shm, "p:")
    assert table.put_if_absent("k", 1, 0.0, 5.0) == 1
    assert table.put_if_absent("k", 2, 1.0, 5.0) == 1  # the first pin wins
    assert table.get("k", 4.9) == 1  # and its expiry is its own
    assert table.put_if_absent("k", 3, 5.0, 5.0) == 3  # once expired, the key is free
    assert table.get("k", 9.9) == 3


def test_of_many_processes_pinning_one_new_key_at_once_the_first_wins(shm: SharedState) -> None:
    """Issue 14 at the table: each process offers its own value for the same new keys, all
    released together; every one is told the same winner per key."""
    code = (
        "import sys\n"
        "from usher.shared import SharedTable\n"
        "from usher.state.shm import SharedKeyTable, SharedState\n"
        f"state = SharedState({shm.fd}, SharedTable.create(4, capacity=16), rows=16)\n"
        "table = SharedKeyTable(state, 'race:')\n"
        "me = int(sys.argv[1])\n"
        "sys.stdin.readline()\n"
        "print(' '.join(str(table.put_if_absent(str(k), me, 0.0, 60.0)) for k in range(300)))\n"
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(me)],
            pass_fds=(shm.fd,),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for me in range(4)
    ]
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    told = [child.communicate(timeout=60)[0].split() for child in children]
    table = SharedKeyTable(shm, "race:")
    for k in range(300):
        assert {t[k] for t in told} == {str(table.get(str(k), 1.0))}, k


def test_the_shared_table_keeps_apart_keys_of_other_prefixes(shm: SharedState) -> None:
    a, b = SharedKeyTable(shm, "a:"), SharedKeyTable(shm, "b:")
    a.put("k", 1, 0.0, 10.0)
    b.put("k", 2, 0.0, 10.0)
    assert (a.get("k", 1.0), b.get("k", 1.0)) == (1, 2)


def test_the_shared_table_stays_bounded_when_a_group_is_full(shm: SharedState) -> None:
    table = SharedKeyTable(shm, "p:")
    for i in range(200_000):  # more than SLOTS: the entries that expire first give way
        table.put(str(i), i, 0.0, 10.0 + i)
    assert table.get("199999", 1.0) == 199999


def test_token_buckets_refill_at_the_rate(shm: SharedState) -> None:
    from usher.limits import LocalRateStore
    from usher.state.shm import SharedBuckets

    for store in (LocalRateStore(10.0, 2.0, 100), SharedBuckets(shm, "rl:", 10.0, 2.0)):
        assert store.take("k", 0.0) == 0.0
        assert store.take("k", 0.0) == 0.0
        assert store.take("k", 0.0) == pytest.approx(0.1)
        assert store.take("k", 0.1) == 0.0
        assert store.take("other", 0.1) == 0.0


def test_ejections_keep_the_latest(kind: str, shm: SharedState) -> None:
    e: Any = local.LocalEjections() if kind == "local" else shm
    assert e.ejected_until(2) == 0.0
    e.eject(2, 10.0)
    e.eject(2, 5.0)
    assert e.ejected_until(2) == 10.0


def test_the_retry_budget_allows_a_share_of_the_requests(kind: str, shm: SharedState) -> None:
    budget: Any = (
        local.LocalBudget(0.2)
        if kind == "local"
        else SharedBudget(shm, "rb:p", 0.2, local.RETRY_BUDGET_RESERVE, local.RETRY_BUDGET_ROOM)
    )
    assert sum(budget.withdraw() for _ in range(100)) == 10  # the reserve
    for _ in range(100):
        budget.deposit()
    budget.flush()
    assert sum(budget.withdraw() for _ in range(100)) == 20


def test_two_workers_share_one_retry_budget(shm: SharedState) -> None:
    one = SharedBudget(shm, "rb:p", 0.5, 0, 100)
    two = SharedBudget(shm, "rb:p", 0.5, 0, 100)
    for _ in range(10):
        one.deposit()
    one.flush()
    assert sum(two.withdraw() for _ in range(10)) == 5


def test_a_sequence_counts_for_everyone(kind: str, shm: SharedState) -> None:
    if kind == "local":
        a: Any = local.LocalSequence()
        b = a
    else:
        a, b = SharedSequence(shm, "rr:p"), SharedSequence(shm, "rr:p")
    assert [a.next(), b.next(), a.next()] == [0, 1, 2]


def test_the_queue_is_first_in_first_out_over_workers(kind: str, shm: SharedState) -> None:
    index = shm.queue_index("p")
    assert index is not None
    queue: Any = local.LocalQueue(3) if kind == "local" else SharedQueue(shm, index, 3)
    t0, t1, t2 = queue.join(1), queue.join(0), queue.join(1)
    assert queue.join(2) is None  # full
    assert queue.waiting()
    assert queue.grant(0) is None  # worker 1's waiter is first
    assert queue.grant(1) == t0
    assert queue.grant(1) is None  # the grant holds the head until done
    queue.done(t0, 1)
    assert queue.grant(1) is None
    queue.leave(t1, 0)  # worker 0's waiter gave up
    assert queue.grant(1) == t2
    queue.done(t2, 1)
    assert not queue.waiting()


def test_a_dead_workers_waiters_leave_the_queue(shm: SharedState) -> None:
    index = shm.queue_index("p")
    assert index is not None and shm.queue_index("p") == index
    queue = SharedQueue(shm, index, 10)
    queue.join(2)
    ticket = queue.join(0)
    shm.forget_worker(2)
    assert queue.grant(0) == ticket


def test_a_lock_held_by_a_killed_process_blocks_nobody(shm: SharedState) -> None:
    """A process takes row 3's lock and is killed with SIGKILL while holding it."""
    read, write = os.pipe()
    code = (
        "import fcntl, os, sys, time\n"
        f"fcntl.lockf({shm.fd}, fcntl.LOCK_EX, 1, 3)\n"
        f"os.write({write}, b'x')\n"
        "time.sleep(60)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], pass_fds=(shm.fd, write))
    os.close(write)
    try:
        assert os.read(read, 1) == b"x"
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    finally:
        os.close(read)
        if child.poll() is None:
            child.kill()
    assert shm.admit(3, 0, 0, 1)  # would wait forever if the lock had outlived the process
