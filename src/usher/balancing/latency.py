"""Latency-aware balancing: `least_response_time` (latency * load / weight) and `p2c`
(power of two random choices scored by peak-EWMA latency, as Finagle and Linkerd do)."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import Algorithm, SelectionContext, Stepwise, register
from usher.balancing.least import FairTies
from usher.balancing.probes import SCORED, SlowProbes

if TYPE_CHECKING:
    from usher.balancing import BackendView

_INF = float("inf")
# Used when no options are given; the config's own default is the same.
DEFAULT_EWMA_DECAY = 10.0
# Finagle's penalty: an unprobed backend is tried once, but not flooded before it has answered.
UNPROBED_PENALTY = 1e9


def _decay_of(algorithm: Algorithm) -> float:
    options = algorithm.options
    return options.ewma_decay if options is not None else DEFAULT_EWMA_DECAY


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class LeastResponseTime(Stepwise):
    """Lowest `(active + 1) * latency / effective_weight`, latency being the pool's EWMA.

    A backend with no sample counts as the mean of those with one, so that it gets tried. A
    backend that is passed over gets no new samples, so its old latency is forgotten over time
    (`ewma_decay`): it drifts towards the fastest backend's and the backend is tried again once
    it is no worse. (Towards the mean, which counts the slow backend itself, it could stay
    above the fast ones' score for ever at low load.) A backend more than `SLOW_FACTOR` times
    slower than the fastest is only probed, one request at a time, and one not sent anything
    for `ewma_decay` gets the next request (usher.balancing.probes). Ties go to fewer requests
    in flight per weight, then by `FairTies`.
    """

    def prepare(self) -> None:
        self._decay = _decay_of(self)
        self._index = {backend: i for i, backend in enumerate(self.backends)}
        # When each backend's latency was last sampled; samples older than this instance
        # count as fresh.
        self._sampled = [self.clock.now()] * len(self.backends)
        self._ties = FairTies(self.backends)
        self._probes = SlowProbes(self.backends, self.clock, self._decay)

    def pick(self, ctx: SelectionContext, excluded: int) -> int:
        latencies = self._latencies(ctx, excluded)
        candidates = 0  # bit i: backends[i] may be picked
        for i, latency in enumerate(latencies):
            if latency >= 0.0:
                candidates |= 1 << i
        lowest = self._probes.lowest(candidates)
        rank_of = self._probes.rank
        tie_key = self._ties.key
        best = best_rank = -1
        best_score = best_load = best_tie = 0.0
        for i, backend in enumerate(self.backends):
            latency = latencies[i]
            if latency < 0.0:
                continue
            weight = backend.effective_weight
            if weight <= 0:
                rank, score, load = SCORED, _INF, _INF
            else:
                active = backend.in_flight()  # over every worker
                rank = rank_of(i, backend, lowest)
                load = active / weight
                score = (active + 1) * latency / weight
            if best < 0 or rank < best_rank:
                better = True
            elif rank > best_rank:
                continue
            else:
                better = score < best_score or (score == best_score and load < best_load)
            if better:
                best, best_rank, best_score, best_load = i, rank, score, load
                best_tie = tie_key(i)
            elif score == best_score and load == best_load:
                tie = tie_key(i)
                if tie < best_tie:
                    best, best_tie = i, tie
        return best

    def _latencies(self, ctx: SelectionContext, excluded: int) -> list[float]:
        """Each backend's latency as of now (its EWMA, forgotten with time towards the lowest
        EWMA of the pool; the mean when it has none), or -1 for those not to pick."""
        backends = self.backends
        total = 0.0
        sampled = 0
        lowest = _INF
        for backend in backends:
            ewma = backend.latency_ewma
            if ewma > 0.0:
                total += ewma
                sampled += 1
                if ewma < lowest:
                    lowest = ewma
        mean = total / sampled if sampled else 0.0
        now = self.clock.now()
        decay = self._decay
        stamps = self._sampled
        eligible = ctx.eligible
        latencies = [-1.0] * len(backends)
        for i, backend in enumerate(backends):
            if excluded >> i & 1 or not eligible(backend):
                continue
            latency = backend.latency_ewma
            if latency <= 0.0:
                latency = mean
            else:
                elapsed = now - stamps[i]
                if elapsed > 0.0:
                    latency = lowest + (latency - lowest) * math.exp(-elapsed / decay)
            latencies[i] = latency
        return latencies

    def on_start(self, backend: BackendView) -> None:
        self._ties.started(backend)
        self._probes.started(backend)

    def on_finish(self, backend: BackendView, latency: float, ok: bool) -> None:
        index = self._index.get(backend)
        # The pool updates `latency_ewma` on success only; note when that happened.
        if ok and index is not None:
            self._sampled[index] = self.clock.now()
            self._probes.answered(backend, latency)


register("least_response_time")(LeastResponseTime)


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class PowerOfTwoChoices(Algorithm):
    """Draws two distinct eligible backends at random by effective weight and prefers the lower
    `cost * (active + 1) / effective_weight`, cost being its own peak-EWMA of latency.

    The peak-EWMA jumps to any latency above it and otherwise decays towards new samples with
    `exp(-elapsed / ewma_decay)`; it also decays towards zero while no sample comes, so a
    backend that recovered gets probed again. An unprobed backend costs 0, so it is tried, but
    only one request at a time until it has answered (Finagle's penalty). Of the two, one more
    than `SLOW_FACTOR` times slower than the fastest is only probed, one request at a time
    (usher.balancing.probes). After the winner of the draw, the others follow by score, for
    retries.
    """

    def prepare(self) -> None:
        n = len(self.backends)
        self._decay = _decay_of(self)
        self._index = {backend: i for i, backend in enumerate(self.backends)}
        self._cost = [-1.0] * n  # -1: never probed
        self._stamp = [0.0] * n
        self._rng = random.Random(self.seed)
        self._probes = SlowProbes(self.backends, self.clock, self._decay)

    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        first, second = self._draw(ctx)
        if first < 0:
            return
        now = self.clock.now()
        if second >= 0:
            lowest = self._probes.lowest(self._eligible(ctx))
            first_rank = self._probes.rank(first, self.backends[first], lowest)
            second_rank = self._probes.rank(second, self.backends[second], lowest)
            if second_rank < first_rank or (
                second_rank == first_rank and self._score(second, now) < self._score(first, now)
            ):
                first = second
        yield self.backends[first]
        eligible = ctx.eligible
        now = self.clock.now()
        rest = [
            (self._score(i, now), i)
            for i, backend in enumerate(self.backends)
            if i != first and eligible(backend)
        ]
        rest.sort()
        for _, i in rest:
            yield self.backends[i]

    def _draw(self, ctx: SelectionContext) -> tuple[int, int]:
        """Two distinct eligible backends drawn by weight (-1 where there are not enough)."""
        backends = self.backends
        eligible = ctx.eligible
        total = 0.0
        count = 0
        for backend in backends:
            if eligible(backend):
                count += 1
                total += _weight(backend)
        if count == 0:
            return -1, -1
        # All weights zero (slow start's first instant): draw uniformly instead.
        uniform = total <= 0.0
        if uniform:
            total = float(count)
        first = self._pick(ctx, self._rng.random() * total, -1, uniform)
        if count == 1:
            return first, -1
        remaining = total - (1.0 if uniform else _weight(backends[first]))
        if remaining <= 0.0:
            # Only zero weights are left: any of them will do as the second.
            remaining, uniform = float(count - 1), True
        return first, self._pick(ctx, self._rng.random() * remaining, first, uniform)

    def _pick(self, ctx: SelectionContext, point: float, skip: int, uniform: bool) -> int:
        last = -1
        for i, backend in enumerate(self.backends):
            if i == skip or not ctx.eligible(backend):
                continue
            weight = 1.0 if uniform else _weight(backend)
            if weight <= 0.0:
                continue
            last = i
            point -= weight
            if point < 0.0:
                return i
        # Float rounding can leave `point` a hair above zero at the end.
        return last

    def _eligible(self, ctx: SelectionContext) -> int:
        """The eligible backends, as a bit set."""
        eligible = ctx.eligible
        bits = 0
        for i, backend in enumerate(self.backends):
            if eligible(backend):
                bits |= 1 << i
        return bits

    def cost(self, backend: BackendView) -> float | None:
        """The backend's peak-EWMA latency as of now, in seconds; None before its first answer."""
        index = self._index.get(backend)
        if index is None or self._cost[index] < 0.0:
            return None
        return self._decayed(index, self.clock.now())

    def _decayed(self, index: int, now: float) -> float:
        cost = self._cost[index]
        elapsed = now - self._stamp[index]
        return cost * math.exp(-elapsed / self._decay) if elapsed > 0.0 else cost

    def _score(self, index: int, now: float) -> float:
        backend = self.backends[index]
        weight = backend.effective_weight
        if weight <= 0:
            return _INF
        active = backend.in_flight()  # over every worker
        if self._cost[index] < 0.0:
            return 0.0 if active == 0 else UNPROBED_PENALTY + active / weight
        return self._decayed(index, now) * (active + 1) / weight

    def on_start(self, backend: BackendView) -> None:
        self._probes.started(backend)

    def on_finish(self, backend: BackendView, latency: float, ok: bool) -> None:
        index = self._index.get(backend)
        if index is None:  # a request that outlived a rebuild of the algorithm
            return
        now = self.clock.now()
        cost = self._cost[index]
        if ok:
            self._probes.answered(backend, latency)
        else:
            # A fast failure (refused, reset) must not make a backend look fast.
            if cost < 0.0:
                return  # still unprobed: a failure says nothing of its speed
            latency = max(latency, cost)
        if latency > cost:
            cost = latency
        else:
            w = math.exp(-(now - self._stamp[index]) / self._decay)
            cost = cost * w + latency * (1.0 - w)
        self._cost[index] = cost
        self._stamp[index] = now


register("p2c")(PowerOfTwoChoices)


def _weight(backend: BackendView) -> float:
    weight = backend.effective_weight
    return weight if weight > 0 else 0.0
