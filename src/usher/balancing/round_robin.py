"""Smooth weighted round robin (nginx's algorithm): weights 5,1,1 give a a b a c a a."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from usher.balancing import Algorithm, SelectionContext, register

if TYPE_CHECKING:
    from usher.pool import Backend


@register("round_robin", "weighted_round_robin")
class RoundRobin(Algorithm):
    """Each pick adds every eligible backend's weight to its running score, takes the highest,
    and subtracts the total from the winner: heavy backends win often but never in long runs."""

    def __init__(self, backends: Sequence[Backend], *, seed: int = 0) -> None:
        super().__init__(backends, seed=seed)
        # The seed offsets the starting scores so that workers do not move in lockstep.
        n = len(self.backends)
        self._current = [0] * n
        for _ in range(seed % n if n else 0):
            self._step(lambda _b: True)

    def candidates(self, ctx: SelectionContext) -> Iterator[Backend]:
        excluded: set[int] = set()
        while True:
            index = self._step(lambda b, ex=excluded: ctx.eligible(b), excluded)
            if index < 0:
                return
            excluded.add(index)
            yield self.backends[index]

    def _step(self, eligible: object, excluded: set[int] | None = None) -> int:
        accept = eligible  # callable(Backend) -> bool
        best = -1
        total = 0
        current = self._current
        for i, backend in enumerate(self.backends):
            if excluded and i in excluded:
                continue
            if not accept(backend):  # type: ignore[operator]
                continue
            weight = backend.effective_weight
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best
