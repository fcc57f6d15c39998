"""Balancing by reported headroom: shares follow `effective_weight * (1 - load)`."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from usher.balancing import Algorithm, SelectionContext, register

if TYPE_CHECKING:
    from usher.pool import Backend

# The load assumed of a backend whose agent has not reported yet: neither favoured nor starved.
UNKNOWN_LOAD = 0.5


def headroom(backend: Backend) -> float:
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


def _floor(backend: Backend) -> float:
    weight = backend.effective_weight
    return weight if weight > 0 else 0.0


@register("resource")
class Resource(Algorithm):
    """Smooth weighted round robin (as `round_robin`) over the headroom of each backend, read
    afresh on every pick, so the split follows the reports as closely as it can.

    A backend with no headroom (full, or weight zero) is left out while any other has some;
    when none has, they share by effective weight rather than refuse the request.
    """

    def __init__(self, backends: Sequence[Backend], **kwargs: Any) -> None:
        super().__init__(backends, **kwargs)
        n = len(self.backends)
        self._current = [0.0] * n
        self._floor_current = [0.0] * n
        # The seed advances the sequence, so that workers do not move in lockstep.
        for _ in range(self.seed % n if n else 0):
            self._step(_always, 0)

    def candidates(self, ctx: SelectionContext) -> Iterator[Backend]:
        excluded = 0
        while True:
            index = self._step(ctx.eligible, excluded)
            if index < 0:
                return
            excluded |= 1 << index
            yield self.backends[index]

    def _step(self, eligible: Callable[[Backend], bool], excluded: int) -> int:
        index = _smooth(self.backends, self._current, headroom, eligible, excluded)
        if index >= 0:
            return index
        return _smooth(self.backends, self._floor_current, _floor, eligible, excluded)


def _smooth(
    backends: Sequence[Backend],
    current: list[float],
    weight_of: Callable[[Backend], float],
    eligible: Callable[[Backend], bool],
    excluded: int,
) -> int:
    """One step of smooth weighted round robin among eligible backends of positive weight."""
    best = -1
    total = 0.0
    for i, backend in enumerate(backends):
        if excluded >> i & 1 or not eligible(backend):
            continue
        weight = weight_of(backend)
        if weight <= 0.0:
            continue
        current[i] += weight
        total += weight
        if best < 0 or current[i] > current[best]:
            best = i
    if best >= 0:
        current[best] -= total
    return best


def _always(_backend: Backend) -> bool:
    return True
