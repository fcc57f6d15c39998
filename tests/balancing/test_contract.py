"""The contract every registered balancing algorithm keeps (usher.testing), run over each of
them by name: a new algorithm is tested here as soon as it registers."""

from __future__ import annotations

import pytest

from usher.balancing import ALGORITHMS, Algorithm, get_algorithm, registered_names
from usher.testing import AlgorithmContract

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
