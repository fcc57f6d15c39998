"""Tests of the one attempts policy (HTTP and L4): next backend, retry or give up, the answer."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.errors import ConnectError, UpstreamError, UpstreamProtocolError, UpstreamTimeout
from usher.metrics import Metrics
from usher.pool import Pool, Selection
from usher.pool.attempts import Attempts, answer_for, may_replay


def attempts_on(*backends: str | dict[str, Any], **options: Any) -> Attempts:
    """Attempts at a pool of backends that are never connected to, on virtual time."""
    specs = [{"address": b} if isinstance(b, str) else b for b in backends]
    config = PoolConfig.model_validate({"backends": specs, **options})
    pool = Pool("web", config, ManualClock())
    return Attempts(pool, Selection("192.0.2.1", pool.clock.now()), Metrics())


def retries(attempts: Attempts) -> int:
    return attempts.metrics.retries_total.get(("web",), 0)


def test_connect_failures_move_on_to_the_next_backend_until_the_budget_is_spent() -> None:
    attempts = attempts_on(
        "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003", retries={"attempts": 1}
    )
    first = attempts.next([])
    assert first is not None and first.active == 1
    assert attempts.failed(ConnectError("refused"))
    assert first.active == 0 and first.failures_total == 1
    second = attempts.next([])
    assert second is not None and second is not first
    assert attempts.failed(ConnectError("refused"))
    assert attempts.next([]) is None  # one retry allowed: the third is never tried
    assert retries(attempts) == 1
    assert attempts.verdict() == (502, "no backend could be reached")


def test_an_error_that_is_not_retry_safe_is_answered_at_once() -> None:
    attempts = attempts_on("127.0.0.1:9001", "127.0.0.1:9002")
    assert attempts.next([]) is not None
    assert not attempts.failed(UpstreamTimeout("slow"))
    assert retries(attempts) == 0


def test_a_body_already_sent_forbids_a_retry() -> None:
    attempts = attempts_on("127.0.0.1:9001", "127.0.0.1:9002")
    assert attempts.next([]) is not None
    assert not attempts.failed(ConnectError("reset"), replayable=False)


def test_the_status_hint_is_decided_in_one_place() -> None:
    assert answer_for(ConnectError("x")) == (502, "no backend could be reached")
    assert answer_for(UpstreamTimeout("x"))[0] == 504
    assert answer_for(UpstreamProtocolError("x"))[0] == 502
    assert answer_for(ValueError("not ours")) == (
        UpstreamError.status_hint,
        UpstreamError.client_detail,
    )


def test_no_backend_at_all_is_a_503() -> None:
    attempts = attempts_on("127.0.0.1:9001")
    attempts.pool.backends[0].state = "disabled"
    assert attempts.next([]) is None
    assert not attempts.may_wait()
    assert attempts.verdict() == (503, "no backend is available")


def test_a_retried_status_is_what_the_client_hears_when_nothing_is_left() -> None:
    attempts = attempts_on("127.0.0.1:9001", retries={"attempts": 1, "on": [503]})
    backend = attempts.next([])
    assert backend is not None
    assert not attempts.retry_status(503, replayable=False)  # a POST is not sent twice
    assert attempts.retry_status(503, replayable=True)
    assert backend.active == 0 and attempts.backend is None
    assert retries(attempts) == 1
    assert attempts.next([]) is None  # the only backend was tried
    assert attempts.verdict() == (503, "the backends answered 503")


def test_a_status_the_pool_does_not_retry_is_kept() -> None:
    attempts = attempts_on("127.0.0.1:9001", "127.0.0.1:9002", retries={"on": [503]})
    assert attempts.next([]) is not None
    assert not attempts.retry_status(502, replayable=True)
    assert attempts.backend is not None  # the answer goes on to the client


def test_running_short_of_descriptors_blames_no_backend() -> None:
    attempts = attempts_on("127.0.0.1:9001", "127.0.0.1:9002")
    backend = attempts.next([])
    assert backend is not None
    reason = attempts.out_of_resources(OSError(errno.EMFILE, "too many open files"), "test")
    assert reason is not None
    assert backend.active == 0 and backend.failures_total == 0
    assert attempts.out_of_resources(ConnectError("refused"), "test") is None


def test_finish_and_abandon_settle_the_current_try_once() -> None:
    attempts = attempts_on("127.0.0.1:9001")
    backend = attempts.next([])
    assert backend is not None
    attempts.finish(True, latency=0.25)
    attempts.finish(True)
    assert backend.active == 0 and backend.requests_total == 1
    attempts.abandon()  # nothing left to abandon
    assert backend.active == 0


def test_replaying_needs_an_idempotent_method_without_a_body() -> None:
    assert may_replay(b"GET", False)
    assert not may_replay(b"GET", True)
    assert not may_replay(b"POST", False)


async def test_the_wait_queue_wakes_on_a_free_slot_or_times_out() -> None:
    attempts = attempts_on(
        {"address": "127.0.0.1:9001", "max_connections": 1},
        queue={"size": 2, "timeout": "50ms"},
    )
    loop = asyncio.get_running_loop()
    pool = attempts.pool
    holder = Attempts(pool, Selection("192.0.2.2", pool.clock.now()), Metrics())
    taken = holder.next([])
    assert taken is not None
    assert attempts.next([]) is None and attempts.may_wait()
    woken: list[str] = []
    assert attempts.wait(loop, lambda: woken.append("free"), lambda: woken.append("timeout"))
    holder.finish(True)
    await asyncio.sleep(0)
    assert woken == ["free"]
    assert attempts.wait(loop, lambda: woken.append("free"), lambda: woken.append("timeout"))
    await asyncio.sleep(0.1)
    assert woken == ["free", "timeout"]
    assert attempts.wait(loop, lambda: woken.append("free"), lambda: woken.append("timeout"))
    attempts.stop_waiting()
    await asyncio.sleep(0.1)
    assert woken == ["free", "timeout"]
