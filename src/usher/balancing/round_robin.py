"""Smooth weighted round robin (nginx's algorithm): weights 5,1,1 give a a b a c a a."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import SelectionContext, Stepwise, any_backend, register, smooth_step

if TYPE_CHECKING:
    from usher.pool import Backend


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class RoundRobin(Stepwise):
    """Each pick adds every eligible backend's weight to its running score, takes the highest,
    and subtracts the total from the winner: heavy backends win often but never in long runs."""

    def prepare(self) -> None:
        n = len(self.backends)
        self._current: list[float] = [0.0] * n
        # The seed advances the sequence, so that workers do not move in lockstep.
        for _ in range(self.seed % n if n else 0):
            smooth_step(self.backends, self._current, _effective_weight, any_backend)

    def pick(self, ctx: SelectionContext, excluded: int) -> int:
        return smooth_step(self.backends, self._current, _effective_weight, ctx.eligible, excluded)


register("round_robin", "weighted_round_robin")(RoundRobin)


def _effective_weight(backend: Backend) -> float:
    return backend.effective_weight
