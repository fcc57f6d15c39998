"""A serving process freezes what it made while starting, so full collections skip it."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from usher.process.heap import freeze_startup_objects


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the rest of the suite collects as usual


def test_objects_alive_at_start_up_are_frozen_and_garbage_is_not(unfrozen: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    kept = Node()
    Node()  # garbage before the freeze
    assert gc.get_freeze_count() == 0
    freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not any(isinstance(o, Node) and o is not kept for o in gc.get_objects())
    # What serving makes afterwards is tracked again, and collected as usual.
    Node()
    assert gc.collect() >= 1
    assert gc.get_freeze_count() == frozen
