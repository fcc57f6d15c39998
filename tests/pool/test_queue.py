"""The wait queue (usher.pool.queue), in one process and shared by two workers' copies of a
pool (over usher.state.shm): first in, first out, newcomers included, with the real attempts
policy (usher.pool.attempts) scheduling each woken attempt on the event loop as the HTTP
exchange does."""

from __future__ import annotations

import asyncio

import pytest

# `shm` and `table`: the fixtures of the state two workers share (used by name).
from tests.pool.test_pool_shared import backends, shm, table, worker_pools  # noqa: F401
from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.metrics import Metrics
from usher.pool import Pool, Selection
from usher.pool.attempts import Attempts
from usher.state.shm import SharedState


class Requests:
    """Requests to copies of one pool, each retried from the queue when woken; `served`
    lists them in the order they got the backend."""

    def __init__(self) -> None:
        self.served: list[str] = []
        self.running: dict[str, Attempts] = {}

    def send(self, pool: Pool, name: str, *, leaves: bool = False) -> None:
        """A request; with `leaves`, its client is gone by the time it is woken."""
        loop = asyncio.get_running_loop()
        attempts = Attempts(pool, Selection("10.0.0.1", pool.clock.now()), Metrics())

        def attempt() -> None:
            if attempts.next([]) is not None:
                self.served.append(name)
                self.running[name] = attempts
                return
            assert attempts.may_wait(), name
            woken = (lambda: None) if leaves else (lambda: loop.call_soon(attempt))
            assert attempts.wait(loop, woken, self._timed_out), name

        attempt()

    def finish(self, name: str) -> None:
        self.running.pop(name).finish(True)

    @staticmethod
    def _timed_out() -> None:
        raise AssertionError("a waiter timed out")


async def settle() -> None:
    """Let the callbacks the queue scheduled run (the wake, the attempt, the release)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def limited(request: pytest.FixtureRequest) -> list[Pool]:
    """Two workers' copies of a pool of one backend at max_connections 1, with a queue."""
    state: SharedState = request.getfixturevalue("shm")  # test_pool_shared's, by name
    return worker_pools(
        state,
        ManualClock(1000.0),
        backends=backends(1, max_connections=1),
        queue={"size": 10, "timeout": "10s"},
    )


def alone() -> Pool:
    config = PoolConfig.model_validate(
        {
            "backends": [{"address": "127.0.0.1:9001", "max_connections": 1}],
            "queue": {"size": 10, "timeout": "10s"},
        }
    )
    return Pool("web", config, ManualClock(1000.0))


async def test_in_one_process_a_newcomer_does_not_pass_the_woken_waiter() -> None:
    # The wake runs in the finish of the request that freed the slot; the woken attempt
    # runs on the loop after the reads that came in meanwhile.
    pool = alone()
    requests = Requests()
    requests.send(pool, "first")
    requests.send(pool, "waiter")
    requests.finish("first")
    requests.send(pool, "newcomer")
    await settle()
    assert requests.served == ["first", "waiter"]
    requests.finish("waiter")
    await settle()
    assert requests.served == ["first", "waiter", "newcomer"]


async def test_in_one_process_a_woken_waiter_whose_client_left_lets_the_next_in() -> None:
    pool = alone()
    requests = Requests()
    requests.send(pool, "first")
    requests.send(pool, "gone", leaves=True)
    requests.finish("first")
    requests.send(pool, "newcomer")  # queued behind the woken one
    await settle()
    assert requests.served == ["first", "newcomer"]


async def test_a_newcomer_in_the_woken_waiters_worker_does_not_pass_it(limited: list[Pool]) -> None:
    # Issue 14, seen as 0,1,2,4,5,3 at --workers 4: between the wake of the waiter at the
    # head and its attempt, the event loop handles reads that came in meanwhile; a new
    # request in that worker was let through by the grant, took the slot, and the woken
    # waiter went to the tail.
    one, two = limited
    requests = Requests()
    requests.send(one, "first")
    requests.send(two, "waiter")
    assert requests.served == ["first"]
    requests.finish("first")
    two.serve_queue()  # the worker's state loop: the waiter heads the queue and is woken
    requests.send(two, "newcomer")  # read before the waiter's attempt runs
    await settle()
    assert requests.served == ["first", "waiter"]
    requests.finish("waiter")
    two.serve_queue()
    await settle()
    assert requests.served == ["first", "waiter", "newcomer"]


async def test_a_newcomer_in_the_other_worker_waits_behind_the_woken_waiter(
    limited: list[Pool],
) -> None:
    one, two = limited
    requests = Requests()
    requests.send(one, "first")
    requests.send(two, "waiter")
    requests.finish("first")
    two.serve_queue()
    requests.send(one, "newcomer")
    await settle()
    assert requests.served == ["first", "waiter"]


async def test_waiters_of_both_workers_are_served_in_arrival_order(limited: list[Pool]) -> None:
    pools = limited
    requests = Requests()
    requests.send(pools[0], "0")
    # Arrivals alternate unevenly between the workers; each freed slot is taken where the
    # head waits, whichever worker freed it.
    for i, worker in enumerate([1, 1, 0, 1, 0, 0, 1], start=1):
        requests.send(pools[worker], str(i))
    for _ in range(8):
        current = requests.served[-1]
        requests.finish(current)
        for pool in pools:
            pool.serve_queue()
        await settle()
    assert requests.served == [str(i) for i in range(8)]


async def test_newcomers_while_the_queue_drains_are_served_after_every_waiter(
    limited: list[Pool],
) -> None:
    pools = limited
    requests = Requests()
    requests.send(pools[0], "w0")
    for i in range(1, 4):
        requests.send(pools[i % 2], f"w{i}")
    late = 0
    while len(requests.served) < 4 + late:
        requests.finish(requests.served[-1])
        for pool in pools:
            pool.serve_queue()
        if late < 4:
            # Sent between the wake and the attempt, to the worker of the woken waiter.
            requests.send(pools[(late + 1) % 2], f"n{late}")
            late += 1
        await settle()
    assert requests.served == ["w0", "w1", "w2", "w3", "n0", "n1", "n2", "n3"]
