"""Smooth weighted round robin (nginx's algorithm): weights 5,1,1 give a a b a c a a."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from usher.balancing import Algorithm, SelectionContext, register

if TYPE_CHECKING:
    from usher.pool import Backend


@register("round_robin", "weighted_round_robin")
class RoundRobin(Algorithm):
    """Each pick adds every eligible backend's weight to its running score, takes the highest,
    and subtracts the total from the winner: heavy backends win often but never in long runs."""

    def __init__(self, backends: Sequence[Backend], **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        n = len(self.backends)
        self._current: list[float] = [0.0] * n
        # The seed advances the sequence, so that workers do not move in lockstep.
        for _ in range(self.seed % n if n else 0):
            self._step(_always)

    def candidates(self, ctx: SelectionContext) -> Iterator[Backend]:
        excluded: set[int] = set()
        while True:
            index = self._step(ctx.eligible, excluded)
            if index < 0:
                return
            excluded.add(index)
            yield self.backends[index]

    def _step(self, eligible: Callable[[Backend], bool], excluded: set[int] | None = None) -> int:
        best = -1
        total = 0.0
        current = self._current
        for i, backend in enumerate(self.backends):
            if excluded and i in excluded:
                continue
            if not eligible(backend):
                continue
            weight = backend.effective_weight
            current[i] += weight
            total += weight
            if best < 0 or current[i] > current[best]:
                best = i
        if best >= 0:
            current[best] -= total
        return best


def _always(_backend: Backend) -> bool:
    return True
