"""Smooth weighted round robin (nginx's algorithm): weights 5,1,1 give a a b a c a a."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import SelectionContext, Stepwise, any_backend, register, smooth_step

if TYPE_CHECKING:
    from usher.balancing import BackendView
    from usher.clock import Clock
    from usher.config import PoolConfig
    from usher.state import Sequence as Position

# Longest schedule kept for a shared position (sum of the weights over their gcd); beyond it
# each worker keeps its own position.
MAX_SCHEDULE = 10_000


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class RoundRobin(Stepwise):
    """Each pick adds every eligible backend's weight to its running score, takes the highest,
    and subtracts the total from the winner: heavy backends win often but never in long runs.

    With several workers, `sequence` is a position all of them advance (usher.state): each
    computes the same schedule from the same weights and picks the entry at the position, so
    the weights hold over the whole balancer, not per worker. A scheduled backend that is not
    eligible now (or ramps up in slow start) falls back to this worker's own smooth step."""

    def __init__(
        self,
        backends: Sequence[BackendView],
        *,
        sequence: Position | None = None,
        seed: int = 0,
        clock: Clock | None = None,
        options: PoolConfig | None = None,
    ) -> None:
        self._sequence = sequence  # read by prepare(), which the base's __init__ calls
        super().__init__(backends, seed=seed, clock=clock, options=options)

    def prepare(self) -> None:
        n = len(self.backends)
        self._current: list[float] = [0.0] * n
        sequence = self._sequence
        self._schedule: list[int] = schedule(self.backends) if sequence is not None else []
        # The seed advances the sequence, so that workers do not move in lockstep.
        for _ in range(self.seed % n if n and not self._schedule else 0):
            smooth_step(self.backends, self._current, _effective_weight, any_backend)

    def pick(self, ctx: SelectionContext, excluded: int) -> int:
        plan = self._schedule
        if plan and not excluded and self._sequence is not None:
            index = plan[self._sequence.next() % len(plan)]
            backend = self.backends[index]
            if backend.ramp_start is None and ctx.eligible(backend):
                return index
        return smooth_step(self.backends, self._current, _effective_weight, ctx.eligible, excluded)


def schedule(backends: Sequence[BackendView]) -> list[int]:
    """One period of smooth weighted round robin over the configured weights (indexes into
    `backends`); empty when it would be longer than MAX_SCHEDULE or no weight is positive."""
    weights = [b.weight for b in backends if b.weight > 0]
    if not weights:
        return []
    period = sum(weights) // math.gcd(*weights)
    if period > MAX_SCHEDULE:
        return []
    current = [0.0] * len(backends)
    return [smooth_step(backends, current, _configured_weight, any_backend) for _ in range(period)]


register("round_robin", "weighted_round_robin")(RoundRobin)


def _effective_weight(backend: BackendView) -> float:
    return backend.effective_weight


def _configured_weight(backend: BackendView) -> float:
    return backend.weight
