"""Weighted random: each eligible backend with probability proportional to its effective weight."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import Algorithm, SelectionContext, register

if TYPE_CHECKING:
    from usher.balancing import BackendView


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class WeightedRandom(Algorithm):
    """One pass per pick (weighted reservoir sampling of one): no totals to keep up to date when
    weights change under slow start. Retries draw again among the backends not yet offered."""

    def prepare(self) -> None:
        self._rng = random.Random(self.seed)

    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        excluded = 0
        while True:
            index = self._draw(ctx, excluded)
            if index < 0:
                return
            excluded |= 1 << index
            yield self.backends[index]

    def _draw(self, ctx: SelectionContext, excluded: int) -> int:
        eligible = ctx.eligible
        draw = self._rng.random
        total = 0.0
        chosen = -1
        spare = -1  # an eligible backend of weight zero, should no other be left
        for i, backend in enumerate(self.backends):
            if excluded >> i & 1 or not eligible(backend):
                continue
            weight = backend.effective_weight
            if weight <= 0:
                if spare < 0:
                    spare = i
                continue
            total += weight
            # Keeps backend i with probability weight/total: in the end each backend has been
            # kept with probability weight / sum of weights.
            if draw() * total < weight:
                chosen = i
        return chosen if chosen >= 0 else spare


register("random")(WeightedRandom)
