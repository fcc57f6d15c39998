"""The event loop and the replay: virtual time, determinism, and usher's own code reacting to
modelled backends (balancing, ejection and recovery, health checks, retries, limits, queue)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.simulate.helpers import ADDRESSES, config, replay, scenario, three_backends
from usher.clock import ManualClock
from usher.simulate.engine import EventLoop

SLOW = ADDRESSES[2]


def test_events_run_in_time_order_then_in_the_order_scheduled() -> None:
    clock = ManualClock()
    loop = EventLoop(clock)
    seen: list[tuple[str, float]] = []
    for name, when in [("c", 2.0), ("a", 1.0), ("b", 1.0), ("late", 9.0)]:
        loop.at(when, lambda n=name: seen.append((n, clock.now())))
    loop.after(0.5, lambda: loop.after(0.25, lambda: seen.append(("nested", clock.now()))))
    assert loop.run(5.0) == 5
    assert seen == [("nested", 0.75), ("a", 1.0), ("b", 1.0), ("c", 2.0)]
    assert clock.now() == 5.0  # the clock ends at `until`; the 9 s event waits
    assert len(loop) == 1


def test_an_event_in_the_past_runs_now() -> None:
    clock = ManualClock(3.0)
    loop = EventLoop(clock)
    times: list[float] = []
    loop.at(1.0, lambda: times.append(clock.now()))
    loop.run(4.0)
    assert times == [3.0]


def closed(duration: str = "4s", concurrency: int = 32) -> str:
    return f"duration: {duration}\nseed: 7\narrivals: {{concurrency: {concurrency}}}\n"


CLOSED = closed()


def test_round_robin_splits_one_to_one_to_one() -> None:
    result = replay(scenario(CLOSED + three_backends()), config(), "round_robin")
    sent = [result.attempts[a] for a in ADDRESSES]
    assert max(sent) - min(sent) <= 32  # at most one round of the 32 clients apart
    assert sum(result.statuses.values()) == len(result.latencies) > 15_000
    assert result.statuses == {200: len(result.latencies)}


def test_least_connections_sends_less_to_the_slow_backend() -> None:
    result = replay(scenario(CLOSED + three_backends()), config(), "least_connections")
    sent = sum(result.attempts.values())
    assert result.attempts[SLOW] / sent < 0.10
    # 10 in flight on each: the fast ones answer 10x as many.
    assert result.attempts[ADDRESSES[0]] > 7 * result.attempts[SLOW]


def test_closed_loop_throughput_follows_littles_law() -> None:
    # 32 clients, every answer after exactly 2 ms: 16,000 req/s.
    result = replay(scenario(CLOSED + three_backends(slow="2ms")), config(), "round_robin")
    assert abs(len(result.latencies) / 4.0 - 16_000) < 50
    assert all(abs(latency - 0.002) < 1e-9 for latency in result.latencies)


def test_open_loop_arrives_at_the_rate_whatever_the_answers() -> None:
    text = "duration: 20s\nseed: 3\narrivals: {rate: 500/s}\n" + three_backends(slow="1s")
    result = replay(scenario(text), config(), "round_robin")
    # Poisson: 10,000 expected, sd 100. Those still in flight at the end are not counted.
    assert 9_500 < sum(result.attempts.values()) < 10_500


def test_a_seed_gives_the_same_replay_and_another_seed_another() -> None:
    text = closed("1s") + three_backends(
        fast="{lognormal: {median: 2ms, sigma: 0.5}}", slow="{exponential: {mean: 20ms}}"
    )
    first = replay(scenario(text), config(), "p2c")
    again = replay(scenario(text), config(), "p2c")
    other = replay(scenario(text.replace("seed: 7", "seed: 8")), config(), "p2c")
    assert first.latencies == again.latencies
    assert first.attempts == again.attempts
    assert first.latencies != other.latencies


def test_a_dead_backend_is_ejected_retried_around_and_back_after_it_recovers() -> None:
    text = closed("10s", 8) + three_backends(
        slow="2ms", slow_extra="events: [{at: 2s, until: 4s, down: true}]"
    )
    cfg = config("passive_health: {max_fails: 1, fail_timeout: 1s}")
    result = replay(scenario(text), cfg, "round_robin")
    # Connect failures are retried on another backend: no client sees an error.
    assert result.statuses == {200: len(result.latencies)}
    assert result.retries > 0
    changes = [(round(at, 1), label, state) for at, label, state, _ in result.state_changes]
    assert changes[0] == (2.0, SLOW, "unhealthy")
    # The ejection ended while it was still down: ejected again, for twice as long; then it
    # is up and stays in.
    assert changes[1:] == [(3.0, SLOW, "healthy"), (3.0, SLOW, "unhealthy"), (5.0, SLOW, "healthy")]
    share = [bucket.get(SLOW, 0) / max(1, sum(bucket.values())) for bucket in result.share_series]
    assert share[0] > 0.3 and share[2] < 0.01 and share[4] < 0.01 and share[6] > 0.3


def test_active_health_checks_take_out_a_backend_too_slow_for_them() -> None:
    text = closed("9s", 8) + three_backends(
        slow="2ms", slow_extra="events: [{at: 3s, until: 6s, latency: 3s}]"
    )
    cfg = config(
        "health_check: {type: tcp, interval: 500ms, timeout: 1s,"
        " healthy_threshold: 2, unhealthy_threshold: 2}"
    )
    result = replay(scenario(text), cfg, "least_connections")
    states = [(label, state) for _, label, state, _ in result.state_changes]
    assert states == [(SLOW, "unhealthy"), (SLOW, "healthy")]
    down_at, up_at = result.state_changes[0][0], result.state_changes[1][0]
    assert 3.5 <= down_at <= 4.5 and 6.0 <= up_at <= 7.5
    assert "unhealthy after 2 failed checks" in result.state_changes[0][3]


def test_status_retries_hide_failures_within_the_budget() -> None:
    text = closed("2s") + three_backends(slow="2ms", extra="fail_rate: 0.05")
    plain = replay(scenario(text), config(), "round_robin")
    retried = replay(scenario(text), config("retries: {attempts: 2, on: [500]}"), "round_robin")
    failures = plain.statuses[500] / len(plain.latencies)
    assert 0.04 < failures < 0.06
    # A retry fails again 5% of the time: 0.25% of requests fail twice, 0.0125% thrice.
    assert retried.statuses.get(500, 0) / len(retried.latencies) < 0.004
    assert retried.retries > 0


def test_a_read_timeout_answers_504() -> None:
    text = closed(concurrency=8) + three_backends(slow="3s")
    result = replay(scenario(text), config("timeouts: {read: 1s}"), "round_robin")
    assert result.statuses[504] > 0
    assert max(result.latencies) <= 1.0 + 1e-9


def test_the_listener_rate_limit_answers_429() -> None:
    text = "duration: 10s\narrivals: {rate: 200/s}\nclients: 1\n" + three_backends(slow="2ms")
    result = replay(scenario(text), config(listener_extra=", limits: {rate: 50/s}"), "round_robin")
    served = result.statuses[200]
    assert 450 <= served <= 560  # 50/s for 10 s, plus the first burst
    assert result.rejected == result.statuses[429] > 1_000


def test_a_full_backend_queues_requests_until_the_queue_times_out() -> None:
    text = closed(concurrency=12) + three_backends(slow="50ms", fast="50ms")
    cfg = config("queue: {size: 4, timeout: 60ms}", backend_extra=", max_connections: 2")
    result = replay(scenario(text), cfg, "round_robin")
    # 6 served at once, 4 waiting; a waiting one gets the next free slot (50 ms < 60 ms).
    assert 6 * 75 < result.statuses[200] <= 6 * 80
    assert result.statuses[503] > 0  # the rest are refused at once
    assert max(max(counts) for _, counts in result.in_flight) == 2
    queued = [lat for lat in result.latencies if 0.05 + 1e-9 < lat < 0.11]
    assert queued  # answered after waiting in the queue


@pytest.mark.parametrize("sticky", ["{type: cookie}", "{type: source_ip}"])
def test_persistence_keeps_each_client_on_its_backend(sticky: str) -> None:
    text = closed("1s", 8) + "clients: 2\n" + three_backends(slow="2ms")
    result = replay(scenario(text), config(f"sticky: {sticky}"), "round_robin")
    # Two clients, pinned on their first two picks: the third backend gets nothing after.
    assert sorted(result.attempts.values())[0] <= 8
    assert result.statuses == {200: len(result.latencies)}


def test_a_custom_algorithm_is_replayed_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(
        str(Path(__file__).resolve().parents[2] / "examples" / "algorithms")
    )
    text = closed("1s", 8) + "clients: 1\n" + three_backends(slow="2ms")
    result = replay(scenario(text + "algorithms: ['pinned:Pinned']\n"), config(), "pinned:Pinned")
    assert sorted(result.attempts.values())[:2] == [0, 0]  # one client: one backend
