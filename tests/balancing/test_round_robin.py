"""Smooth weighted round robin: nginx's exact sequences, seeds, and skipping unready backends."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from usher.balancing import get_algorithm
from usher.balancing.round_robin import RoundRobin
from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.pool import Backend, Pool, Selection

LETTERS = "abcdefgh"


def make_pool(weights: list[int], *, seed: int = 0, algorithm: str = "round_robin") -> Pool:
    backends: list[dict[str, Any]] = [
        {"address": f"127.0.0.1:{9001 + i}", "weight": w} for i, w in enumerate(weights)
    ]
    config = PoolConfig.model_validate(
        {"algorithm": algorithm, "backends": backends, "passive_health": {"max_fails": 0}}
    )
    return Pool("web", config, ManualClock(), seed=seed)


def letter(pool: Pool, backend: Backend | None) -> str:
    assert backend is not None
    return LETTERS[pool.backends.index(backend)]


def pick(pool: Pool, tried: list[Backend] | None = None) -> str:
    ctx = Selection("192.0.2.1", pool.clock.now())
    ctx.tried.extend(tried or [])
    return letter(pool, pool.select(ctx))


def sequence(pool: Pool, n: int) -> str:
    return "".join(pick(pool) for _ in range(n))


def test_registered_names() -> None:
    assert get_algorithm("round_robin") is RoundRobin
    assert get_algorithm("weighted_round_robin") is RoundRobin


@pytest.mark.parametrize("algorithm", ["round_robin", "weighted_round_robin"])
def test_nginx_smooth_sequence(algorithm: str) -> None:
    pool = make_pool([5, 1, 1], algorithm=algorithm)
    assert sequence(pool, 7) == "aabacaa"
    assert sequence(pool, 14) == "aabacaa" * 2


def test_equal_weights_rotate() -> None:
    assert sequence(make_pool([1, 1, 1]), 9) == "abcabcabc"
    assert sequence(make_pool([2, 2]), 6) == "ababab"


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([3, 1], "aaba"),
        ([2, 1], "aba"),
        ([1, 2], "bab"),
        ([4, 2, 1], "abacaba"),
    ],
)
def test_other_weighted_sequences(weights: list[int], expected: str) -> None:
    pool = make_pool(weights)
    assert sequence(pool, len(expected) * 3) == expected * 3


@pytest.mark.parametrize("weights", [[5, 1, 1], [3, 1], [1, 2, 3, 4], [7, 7, 1]])
def test_exact_shares_over_each_cycle(weights: list[int]) -> None:
    pool = make_pool(weights)
    total = sum(weights)
    for _ in range(3):
        counts = Counter(sequence(pool, total))
        assert counts == {LETTERS[i]: w for i, w in enumerate(weights)}


def test_different_seeds_start_at_different_positions() -> None:
    firsts = {pick(make_pool([1, 1, 1], seed=seed)) for seed in range(3)}
    assert firsts == {"a", "b", "c"}


def test_seeds_only_shift_the_cycle() -> None:
    sequences = {seed: sequence(make_pool([5, 1, 1], seed=seed), 14) for seed in range(3)}
    assert len(set(sequences.values())) == 3
    for seq in sequences.values():
        for start in range(0, 14, 7):
            assert Counter(seq[start : start + 7]) == {"a": 5, "b": 1, "c": 1}
        assert seq in ("aabacaa" * 3)  # a rotation of nginx's cycle


def test_seed_is_taken_modulo_the_backend_count() -> None:
    assert sequence(make_pool([1, 1, 1], seed=4), 6) == sequence(make_pool([1, 1, 1], seed=1), 6)


def test_unready_backend_is_skipped_and_the_others_keep_rotating() -> None:
    pool = make_pool([1, 1, 1])
    pool.set_state(pool.backends[1], "disabled")
    assert sequence(pool, 6) in ("acacac", "cacaca")


def test_unready_backend_is_skipped_and_the_others_keep_their_weights() -> None:
    pool = make_pool([5, 1, 1])
    pool.set_healthy(pool.backends[2], False, "down")
    for _ in range(3):
        assert Counter(sequence(pool, 6)) == {"a": 5, "b": 1}


def test_a_backend_back_in_service_rejoins_without_a_burst() -> None:
    pool = make_pool([1, 1, 1, 1])
    b = pool.backends[1]
    assert sequence(pool, 4) == "abcd"
    pool.set_state(b, "disabled")
    during = sequence(pool, 9)
    for start in range(0, 9, 3):
        assert sorted(during[start : start + 3]) == ["a", "c", "d"], during
    pool.set_state(b, "enabled")
    after = sequence(pool, 40)
    assert "bb" not in after
    for start in range(0, 40, 4):
        assert sorted(after[start : start + 4]) == ["a", "b", "c", "d"], after


def test_a_retry_does_not_disturb_the_rotation_much() -> None:
    pool = make_pool([1, 1, 1])
    assert pick(pool) == "a"
    assert pick(pool, tried=[pool.backends[1]]) == "c"  # b's turn, but b was tried
    after = Counter(sequence(pool, 30))
    assert all(abs(after[x] - 10) <= 1 for x in "abc"), after


def test_retries_away_from_a_failing_backend_keep_the_others_even() -> None:
    pool = make_pool([1, 1, 1])
    c = pool.backends[2]
    first_attempts: Counter[str] = Counter()
    served: Counter[str] = Counter()
    for _ in range(300):
        first = pick(pool)
        first_attempts[first] += 1
        # c fails every request: each one is retried on another backend.
        served[pick(pool, tried=[c]) if first == "c" else first] += 1
    assert first_attempts["c"] == 100
    assert served == {"a": 150, "b": 150}


def test_tried_backend_is_skipped() -> None:
    pool = make_pool([1, 1, 1])
    a, b, _ = pool.backends
    for _ in range(9):
        assert pick(pool, tried=[a]) in ("b", "c")
        assert pick(pool, tried=[a, b]) == "c"


def test_effective_weight_is_what_counts() -> None:
    # Slow start lowers effective_weight below the configured weight.
    pool = make_pool([1, 1])
    pool.backends[1].effective_weight = 0.25
    counts = Counter(sequence(pool, 50))
    assert counts == {"a": 40, "b": 10}


class _Ctx:
    client_ip = "192.0.2.1"
    key = None

    def __init__(self, out: set[int] | None = None, backends: list[Backend] | None = None):
        self.out = out or set()
        self.backends = backends or []

    def eligible(self, backend: Backend) -> bool:
        return self.backends.index(backend) not in self.out


def test_candidates_give_every_eligible_backend_once() -> None:
    pool = make_pool([5, 1, 1, 2])
    algorithm = RoundRobin(pool.backends, seed=0)
    ctx = _Ctx({1}, pool.backends)
    order = [pool.backends.index(b) for b in algorithm.candidates(ctx)]
    assert sorted(order) == [0, 2, 3]


def test_candidates_of_nothing() -> None:
    algorithm = RoundRobin([], seed=5)
    assert list(algorithm.candidates(_Ctx())) == []
