"""ip_hash and consistent_hash: stable mappings, fallback past ineligible backends, bounded load."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from itertools import islice
from typing import Any

import pytest

from usher.balancing import Algorithm
from usher.balancing.hashing import ConsistentHash, IpHash
from usher.clock import ManualClock
from usher.config import HostPort, PoolConfig
from usher.pool import Backend, Pool, Selection


def backends(*weights: int) -> list[Backend]:
    return [Backend(HostPort(f"10.0.0.{i + 1}", 80), weight=w) for i, w in enumerate(weights)]


def ip(n: int) -> str:
    return f"172.{16 + (n >> 16 & 15)}.{n >> 8 & 255}.{n & 255}"


def pick(algorithm: Algorithm, client: str, key: bytes | None = None) -> Backend | None:
    return next(algorithm.candidates(Selection(client, 0.0, key)), None)


def key_pick(algorithm: Algorithm, key: bytes) -> Backend | None:
    return pick(algorithm, "192.0.2.1", key)


def config(**hash_options: Any) -> PoolConfig:
    return PoolConfig.model_validate(
        {
            "algorithm": "consistent_hash",
            "backends": [{"address": "10.0.0.1:80"}],
            "hash": hash_options,
        }
    )


# ip_hash


def test_ip_hash_is_stable_for_a_thousand_clients() -> None:
    pool = backends(1, 1, 1, 1)
    # Two instances with different seeds stand for two workers: they must agree.
    first, second = IpHash(pool, seed=1), IpHash(pool, seed=2)
    mapping = {ip(n): pick(first, ip(n)) for n in range(1000)}
    for _ in range(3):
        assert all(pick(first, client) is chosen for client, chosen in mapping.items())
    assert all(pick(second, client) is chosen for client, chosen in mapping.items())
    assert set(mapping.values()) == set(pool)


def test_ip_hash_honours_weights() -> None:
    pool = backends(3, 1)
    algorithm = IpHash(pool)
    counts = Counter(pick(algorithm, ip(n)) for n in range(4000))
    assert counts[pool[0]] / 4000 == pytest.approx(0.75, abs=0.03)


def test_ip_hash_falls_back_when_the_pinned_backend_is_not_eligible() -> None:
    pool = backends(1, 1, 1, 1)
    algorithm = IpHash(pool)
    before = {ip(n): pick(algorithm, ip(n)) for n in range(1000)}
    down = pool[2]
    down.state = "disabled"
    after = {client: pick(algorithm, client) for client in before}
    for client, chosen in before.items():
        if chosen is not down:
            assert after[client] is chosen  # nobody else moves
        else:
            assert after[client] is not None and after[client] is not down
    # The stranded clients spread over the others, and each always lands on the same one.
    moved = Counter(after[c] for c, chosen in before.items() if chosen is down)
    assert set(moved) == {pool[0], pool[1], pool[3]}
    assert all(pick(algorithm, c) is after[c] for c in before)
    assert all(pick(IpHash(pool, seed=9), c) is after[c] for c in before)
    # Back up: everybody returns where they were.
    down.state = "enabled"
    assert all(pick(algorithm, c) is chosen for c, chosen in before.items())


def test_ip_hash_retries_reach_every_eligible_backend_once() -> None:
    pool = backends(1, 2, 1, 3, 1)
    pool[1].healthy = False
    for n in range(50):
        order = list(IpHash(pool).candidates(Selection(ip(n), 0.0)))
        assert sorted(order, key=pool.index) == [pool[0], pool[2], pool[3], pool[4]]


def test_the_mapping_does_not_depend_on_the_process_hash_seed() -> None:
    # Workers are separate processes: Python's salted hash() would make them disagree.
    script = (
        "import json\n"
        "from usher.balancing.hashing import ConsistentHash, IpHash\n"
        "from usher.pool import Backend, Selection\n"
        "class Address:\n"  # spares the child importing the config machinery
        "    def __init__(self, host): self.host, self.port = host, 80\n"
        "    def __str__(self): return f'{self.host}:80'\n"
        "pool = [Backend(Address(f'10.0.0.{i}')) for i in range(1, 6)]\n"
        "out = []\n"
        "for algorithm in (IpHash(pool), ConsistentHash(pool)):\n"
        "    for n in range(200):\n"
        "        ctx = Selection(f'192.0.2.{n}', 0.0)\n"
        "        out.append(next(algorithm.candidates(ctx)).label)\n"
        "print(json.dumps(out))\n"
    )
    results = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        results.append(json.loads(done.stdout))
    assert results[0] == results[1]
    assert len(set(results[0])) == 5


# consistent_hash


def test_consistent_hash_keys_are_stable() -> None:
    pool = backends(1, 1, 1)
    ring, other = ConsistentHash(pool, seed=0), ConsistentHash(pool, seed=5)
    for n in range(1000):
        key = f"session-{n}".encode()
        assert key_pick(ring, key) is key_pick(ring, key) is key_pick(other, key)


def test_consistent_hash_falls_back_to_the_client_address() -> None:
    ring = ConsistentHash(backends(1, 1, 1, 1, 1))
    for n in range(200):
        assert pick(ring, ip(n), None) is pick(ring, "198.51.100.7", ip(n).encode())


def test_removing_one_of_five_moves_about_a_fifth_of_the_keys() -> None:
    pool = backends(1, 1, 1, 1, 1)
    full = ConsistentHash(pool)
    removed = pool[3]
    smaller = ConsistentHash([b for b in pool if b is not removed])
    keys = [f"/objects/{n}".encode() for n in range(10_000)]
    moved = 0
    for key in keys:
        before, after = key_pick(full, key), key_pick(smaller, key)
        if before is not after:
            moved += 1
            assert before is removed  # only the removed backend's keys move
    assert moved / len(keys) == pytest.approx(1 / 5, abs=0.05)


def test_an_ineligible_backend_is_walked_past() -> None:
    pool = backends(1, 1, 1, 1, 1)
    ring = ConsistentHash(pool)
    keys = [f"k{n}".encode() for n in range(2000)]
    before = {key: key_pick(ring, key) for key in keys}
    down = pool[1]
    down.healthy = False
    moved: Counter[Backend | None] = Counter()
    for key, chosen in before.items():
        now = key_pick(ring, key)
        if chosen is down:
            moved[now] += 1
        else:
            assert now is chosen
    # Its keys go to the next points clockwise, which belong to all of the others.
    assert set(moved) == set(pool) - {down}


def test_weights_skew_the_share() -> None:
    pool = backends(3, 1, 1)
    ring = ConsistentHash(pool)
    counts = Counter(key_pick(ring, f"user:{n}".encode()) for n in range(10_000))
    assert counts[pool[0]] / 10_000 == pytest.approx(0.6, abs=0.05)
    assert counts[pool[1]] / 10_000 == pytest.approx(0.2, abs=0.05)


def test_consistent_hash_retries_reach_every_eligible_backend_once() -> None:
    pool = backends(1, 2, 1, 1)
    pool[2].state = "draining"
    for n in range(50):
        order = list(ConsistentHash(pool).candidates(Selection(ip(n), 0.0)))
        assert sorted(order, key=pool.index) == [pool[0], pool[1], pool[3]]


def hot_keys(pool: list[Backend], target: Backend, count: int) -> list[bytes]:
    """Keys that all land on `target` when nothing is bounded."""
    ring = ConsistentHash(pool)
    keys = (f"hot-{n}".encode() for n in range(100_000))
    return list(islice((key for key in keys if key_pick(ring, key) is target), count))


@pytest.mark.parametrize("factor", [1.25, 2.0])
def test_bounded_load_holds(factor: float) -> None:
    pool_config = PoolConfig.model_validate(
        {
            "algorithm": "consistent_hash",
            "backends": [{"address": f"10.0.0.{i}:80"} for i in range(1, 5)],
            "hash": {"balance_factor": factor},
        }
    )
    pool = Pool("cache", pool_config, ManualClock())
    keys = hot_keys(pool.backends, pool.backends[0], 100)
    assert len(keys) == 100
    n = len(pool.backends)
    for key in keys:  # all in flight at once
        total = sum(b.active for b in pool.backends)
        bound = math.ceil(factor * (total + 1) / n)
        backend = pool.select(Selection("192.0.2.1", 0.0, key))
        assert backend is not None
        pool.on_start(backend)
        assert all(b.active <= bound for b in pool.backends), (bound, pool.backends)
    assert max(b.active for b in pool.backends) <= math.ceil(factor * 100 / n)
    # The owner still gets as much as the bound lets it.
    assert pool.backends[0].active == max(b.active for b in pool.backends)


def test_without_a_bound_the_hot_keys_pile_up() -> None:
    pool = backends(1, 1, 1, 1)
    ring = ConsistentHash(pool, options=config())
    for key in hot_keys(pool, pool[0], 100):
        chosen = key_pick(ring, key)
        assert chosen is pool[0]
        chosen.active += 1
    assert pool[0].active == 100


def test_bounded_load_keeps_keys_home_when_they_finish() -> None:
    # Requests that finish before the next arrives never reach the cap: no key moves.
    pool = backends(1, 1, 1, 1)
    ring = ConsistentHash(pool, options=config(balance_factor=1.25))
    for key in hot_keys(pool, pool[2], 50):
        assert key_pick(ring, key) is pool[2]


def test_bounded_load_honours_weights() -> None:
    pool = backends(3, 1, 1, 1)
    ring = ConsistentHash(pool, options=config(balance_factor=1.5))
    for key in hot_keys(pool, pool[0], 60):
        chosen = key_pick(ring, key)
        assert chosen is not None
        chosen.active += 1
    # The heavy owner's cap is three times a light one's: ceil(1.5 * 60 * 3/6) = 45.
    assert pool[0].active == 45
    assert all(b.active <= math.ceil(1.5 * 60 / 6) for b in pool[1:])


def test_bounded_load_offers_full_backends_last_rather_than_never() -> None:
    pool = backends(1, 1)
    ring = ConsistentHash(pool, options=config(balance_factor=1.25))
    pool[0].active = 10
    key = hot_keys(pool, pool[0], 1)[0]
    assert list(ring.candidates(Selection("192.0.2.1", 0.0, key))) == [pool[1], pool[0]]


def test_nothing_to_offer() -> None:
    assert pick(IpHash([]), "192.0.2.1") is None
    assert pick(ConsistentHash([]), "192.0.2.1") is None
    pool = backends(1, 1)
    for b in pool:
        b.state = "disabled"
    assert pick(IpHash(pool), "192.0.2.1") is None
    assert pick(ConsistentHash(pool, options=config(balance_factor=1.25)), "192.0.2.1") is None
