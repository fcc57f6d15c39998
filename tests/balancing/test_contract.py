"""The contract every registered balancing algorithm keeps (usher.testing), run over each of
them by name: a new algorithm is tested here as soon as it registers."""

from __future__ import annotations

from typing import Any

import pytest

from usher.balancing import ALGORITHMS, Algorithm, Stepwise, get_algorithm, registered_names
from usher.balancing.round_robin import RoundRobin
from usher.clock import ManualClock
from usher.pool import Backend, Selection
from usher.testing import AlgorithmContract, make_pool

NAMES = registered_names()


def test_registry_lists_every_name_sorted() -> None:
    assert "round_robin" in NAMES
    assert "weighted_round_robin" in NAMES
    assert sorted(NAMES) == NAMES
    assert set(NAMES) == set(ALGORITHMS)


def test_unknown_algorithm() -> None:
    with pytest.raises(KeyError, match="unknown algorithm 'nope'"):
        get_algorithm("nope")


@pytest.mark.parametrize("name", NAMES)
def test_registered_class_answers_to_its_name(name: str) -> None:
    cls = get_algorithm(name)
    assert issubclass(cls, Algorithm)
    assert cls.name in NAMES
    assert get_algorithm(cls.name) is cls


class TestEveryRegisteredAlgorithm(AlgorithmContract):
    @pytest.fixture(params=NAMES)
    def algorithm(self, request: pytest.FixtureRequest) -> str:
        name: str = request.param
        return name


class FirstEligible(Stepwise):
    """An algorithm written in Python, as a user would: it subclasses the (compiled) base."""

    def prepare(self) -> None:
        self.prepared = True

    def pick(self, ctx: Any, excluded: int) -> int:
        for i, backend in enumerate(self.backends):
            if not excluded >> i & 1 and ctx.eligible(backend):
                return i
        return -1


def test_an_algorithm_written_in_python_subclasses_the_base() -> None:
    pool = make_pool("round_robin", [1, 1, 1])
    backends = list(pool.backends)
    algorithm = FirstEligible(backends, seed=1, clock=ManualClock())
    assert algorithm.prepared and algorithm.seed == 1
    selection = Selection("10.0.0.1", 0.0)
    selection.tried.append(backends[0])
    assert list(algorithm.candidates(selection)) == backends[1:]


class QuietRoundRobin(RoundRobin):
    """A built-in algorithm extended in Python (compiled, it has to allow that)."""

    def on_start(self, backend: Backend) -> None:
        self.started = backend


def test_a_built_in_algorithm_can_be_extended_in_python() -> None:
    backends = list(make_pool("round_robin", [1, 1]).backends)
    algorithm = QuietRoundRobin(backends, seed=0, clock=ManualClock())
    first = next(algorithm.candidates(Selection("10.0.0.1", 0.0)))
    algorithm.on_start(first)
    assert algorithm.started is first
