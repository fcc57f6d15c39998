"""Balancing by reported headroom: shares follow `effective_weight * (1 - load)`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import SelectionContext, Stepwise, any_backend, register, smooth_step

if TYPE_CHECKING:
    from usher.balancing import BackendView

# The load assumed of a backend whose agent has not reported yet: neither favoured nor starved.
UNKNOWN_LOAD = 0.5


def headroom(backend: BackendView) -> float:
    """The backend's dynamic weight: its effective weight times its spare capacity."""
    load = backend.load
    if load is None:
        load = UNKNOWN_LOAD
    elif load < 0.0:
        load = 0.0
    elif load > 1.0:
        load = 1.0
    weight = backend.effective_weight
    return weight * (1.0 - load) if weight > 0 else 0.0


def _floor(backend: BackendView) -> float:
    weight = backend.effective_weight
    return weight if weight > 0 else 0.0


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class Resource(Stepwise):
    """Smooth weighted round robin (as `round_robin`) over the headroom of each backend, read
    afresh on every pick, so the split follows the reports as closely as it can.

    A backend with no headroom (full, or weight zero) is left out while any other has some;
    when none has, they share by effective weight rather than refuse the request.
    """

    def prepare(self) -> None:
        n = len(self.backends)
        self._current = [0.0] * n
        self._floor_current = [0.0] * n
        # The seed advances the sequence, so that workers do not move in lockstep.
        for _ in range(self.seed % n if n else 0):
            self._step(any_backend, 0)

    def pick(self, ctx: SelectionContext, excluded: int) -> int:
        return self._step(ctx.eligible, excluded)

    def _step(self, eligible: Callable[[BackendView], bool], excluded: int) -> int:
        index = smooth_step(self.backends, self._current, headroom, eligible, excluded)
        if index >= 0:
            return index
        return smooth_step(self.backends, self._floor_current, _floor, eligible, excluded)


register("resource")(Resource)
