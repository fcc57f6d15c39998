"""Hash-based balancing: `ip_hash` (client address, weighted table) and `consistent_hash` (a
ketama ring on any request key, with optional bounded load)."""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from hashlib import blake2b
from itertools import accumulate
from typing import TYPE_CHECKING

from mypy_extensions import mypyc_attr

from usher.balancing import Algorithm, SelectionContext, register

if TYPE_CHECKING:
    from usher.balancing import BackendView

_MASK64 = (1 << 64) - 1
# nginx gives up rehashing after 20 tries, then walks the list.
IP_HASH_REHASHES = 20
# Ring points per unit of weight (libketama uses 160): the share of each backend is within a
# few percent of its weight's, and a lookup is a bisection of a few thousand points.
POINTS_PER_WEIGHT = 160
# Above this many points the ring is scaled down: memory and build time stay bounded when
# weights are large and coprime.
MAX_POINTS = 160 * 1024
# Slack for float rounding in the bounded-load cap, so that it is never looser than exact.
_EPSILON = 1e-9


def hash64(data: bytes) -> int:
    """A stable 64-bit hash: Python's `hash()` is salted per process, and workers must agree."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def _rehash(h: int) -> int:
    # splitmix64: a cheap, well-mixed, deterministic next hash for the fallback sequence.
    h = (h + 0x9E3779B97F4A7C15) & _MASK64
    h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
    return h ^ (h >> 31)


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class IpHash(Algorithm):
    """The client address picks a slot in a table where each backend has `weight` slots (nginx).

    A pinned backend that is not eligible is replaced by rehashing the address, so its clients
    spread over the others by weight while every other client stays where it was; after 20
    misses the list is walked from the last slot tried. The table uses configured weights, not
    effective ones: slow start must not move clients around (nginx forbids the two together).
    """

    def prepare(self) -> None:
        self._bounds = list(accumulate(max(b.weight, 0) for b in self.backends))
        self._total = self._bounds[-1] if self._bounds else 0

    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        backends = self.backends
        n = len(backends)
        if self._total <= 0:
            return
        eligible = ctx.eligible
        bounds = self._bounds
        total = self._total
        seen = 0
        index = 0
        h = hash64(ctx.client_ip.encode())
        for _ in range(IP_HASH_REHASHES):
            index = bisect_right(bounds, h % total)
            bit = 1 << index
            if not seen & bit:
                seen |= bit
                if eligible(backends[index]):
                    yield backends[index]
            h = _rehash(h)
        for step in range(1, n + 1):
            i = (index + step) % n
            bit = 1 << i
            if not seen & bit:
                seen |= bit
                if eligible(backends[i]):
                    yield backends[i]


register("ip_hash")(IpHash)


@mypyc_attr(allow_interpreted_subclasses=True)  # a user may extend it
class ConsistentHash(Algorithm):
    """A ketama ring: each backend owns points in proportion to its weight, a key goes to the
    owner of the first point clockwise from its hash, and ineligible owners are walked past.

    Points are placed by the backend's label, not its position, so adding or removing one of N
    backends moves only the keys on its arcs, about 1/N of them. The key is `ctx.key`, or the
    client address when the request has none. With `hash.balance_factor` set (bounded load,
    Mirrokni et al.; HAProxy's hash-balance-factor), a backend already holding its cap of
    `ceil(factor * (in flight + 1) * weight / eligible weight)` requests is passed over too;
    with equal weights the cap is `ceil(factor * (in flight + 1) / eligible backends)`.
    """

    def prepare(self) -> None:
        hash_options = self.options.hash if self.options is not None else None
        self._factor = hash_options.balance_factor if hash_options is not None else None
        weights = [max(b.weight, 0) for b in self.backends]
        unit = math.gcd(*weights) or 1
        per_unit = float(POINTS_PER_WEIGHT)
        total_points = sum(weights) // unit * POINTS_PER_WEIGHT
        if total_points > MAX_POINTS:
            per_unit *= MAX_POINTS / total_points
        points: list[tuple[int, int]] = []
        for index, (backend, weight) in enumerate(zip(self.backends, weights, strict=True)):
            count = math.ceil(weight / unit * per_unit) if weight else 0
            label = backend.label.encode()
            points.extend((hash64(label + b"-%d" % j), index) for j in range(count))
        # Sorting on (hash, index) settles the rare collision the same way in every worker.
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]

    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        owners = self._owners
        size = len(owners)
        if not size:
            return
        backends = self.backends
        n = len(backends)
        eligible = ctx.eligible
        key = ctx.key if ctx.key is not None else ctx.client_ip.encode()
        position = bisect_left(self._hashes, hash64(key))
        scale = self._cap_scale(ctx) if self._factor is not None else 0.0
        over: list[BackendView] | None = None
        seen = 0
        count = 0
        # Stop once every backend has been met: with all of them ineligible, that takes about
        # n*ln(n) points, not a lap of the whole ring.
        for _ in range(size):
            if position >= size:
                position = 0
            index = owners[position]
            position += 1
            bit = 1 << index
            if seen & bit:
                continue
            seen |= bit
            count += 1
            backend = backends[index]
            if eligible(backend):
                if scale and backend.in_flight() >= math.ceil(
                    scale * backend.effective_weight - _EPSILON
                ):
                    if over is None:
                        over = []
                    over.append(backend)
                else:
                    yield backend
            if count == n:
                break
        # Every eligible backend over its cap still beats failing the request.
        if over:
            yield from over

    def _cap_scale(self, ctx: SelectionContext) -> float:
        """The bounded-load cap per unit of weight for this request; 0.0 means no cap."""
        assert self._factor is not None
        in_flight = 0
        weight = 0.0
        for backend in self.backends:
            if ctx.eligible(backend):
                in_flight += backend.in_flight()  # over every worker
                weight += backend.effective_weight
        if weight <= 0:
            return 0.0
        return self._factor * (in_flight + 1) / weight


register("consistent_hash")(ConsistentHash)
