"""Weighted least connections: the backend with the fewest requests in flight per unit of weight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import SelectionContext, Stepwise, register

if TYPE_CHECKING:
    from usher.balancing import BackendView

_INF = float("inf")


class FairTies:
    """Breaks exact ties between equally good backends in proportion to their weights.

    At low traffic most backends sit at zero requests in flight, so "ties to the first listed"
    alone would send nearly everything to the first backend; nginx and HAProxy rotate over the
    tied ones by weight instead. This does the same with start-time fair queueing: each start
    moves a backend's tag on by 1/weight, and among tied backends the lowest tag wins, the first
    listed on equal tags. The tags move only when a request is started, never on a pick, so
    asking twice without starting anything gives the same answer, and a backend that comes back
    after a pause restarts at the current virtual time instead of winning every tie until it has
    caught up.
    """

    __slots__ = ("_index", "tags", "vtime")

    def __init__(self, backends: Sequence[BackendView]) -> None:
        self._index = {backend: i for i, backend in enumerate(backends)}
        # Read directly by LeastConnections.pick, which inlines `key` (it runs per request).
        self.tags = [0.0] * len(backends)
        self.vtime = 0.0

    def key(self, index: int) -> float:
        """Lower wins a tie."""
        tag = self.tags[index]
        return tag if tag > self.vtime else self.vtime

    def started(self, backend: BackendView) -> None:
        index = self._index.get(backend)
        if index is None:  # a request that outlived a rebuild of the algorithm
            return
        self.started_at(index, backend.effective_weight)

    def started_at(self, index: int, weight: float) -> None:
        """`started` for the backend at `index`, whose weight is `weight`."""
        start = self.key(index)
        self.vtime = start
        self.tags[index] = start + (1.0 / weight if weight > 0 else 1.0)


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class LeastConnections(Stepwise):
    """Lowest `in_flight() / effective_weight` first; exact ties go by `FairTies`."""

    def prepare(self) -> None:
        self._ties = FairTies(self.backends)
        # The index of the last pick: the request usually starts on it, and `on_start` then
        # needs no look-up of the backend's index.
        self._picked = -1

    def pick(self, ctx: SelectionContext, excluded: int) -> int:
        eligible = ctx.eligible
        ties = self._ties
        tags = ties.tags
        vtime = ties.vtime
        best = -1
        best_load = 0.0
        best_tie = 0.0
        for i, backend in enumerate(self.backends):
            if excluded >> i & 1 or not eligible(backend):
                continue
            weight = backend.effective_weight
            # A zero weight (the first instant of slow start) is a last resort, not an error.
            # in_flight: the sum over every worker, so the workers balance as one.
            load = backend.in_flight() / weight if weight > 0 else _INF
            if best >= 0 and load > best_load:
                continue
            tag = tags[i]
            tie = tag if tag > vtime else vtime  # ties.key(i), without a call per backend
            if best < 0 or load < best_load or tie < best_tie:
                best, best_load, best_tie = i, load, tie
        self._picked = best
        return best

    def on_start(self, backend: BackendView) -> None:
        index = self._picked
        if index >= 0 and self.backends[index] is backend:
            self._ties.started_at(index, backend.effective_weight)
        else:  # not the last pick (a hook's choice, a sticky pin): look its index up
            self._ties.started(backend)


register("least_connections", "weighted_least_connections")(LeastConnections)
