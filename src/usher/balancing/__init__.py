"""The selection interface and the registry of balancing algorithms, by their config names.

An algorithm is built from a pool's backend list and answers `candidates(ctx)`: backends in
order of preference. It knows nothing of health or discovery: `ctx.eligible(backend)` says
which backends the pool will accept right now (ready, under their connection limit, not yet
tried for this request), and the caller skips any candidate that is not eligible. Stateful
algorithms learn from `on_start` and `on_finish`; time comes from the injected clock.

What an algorithm may read of a backend is `BackendView`: the interface is typed on it, not on
the pool's `BackendView` (which is one), so an algorithm cannot change a backend behind the pool.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

from mypy_extensions import mypyc_attr

from usher.clock import Clock, MonotonicClock

if TYPE_CHECKING:
    from usher.config import HostPort, PoolConfig


class BackendView(Protocol):
    """What an algorithm may read of a backend (usher.pool.Backend is one)."""

    @property
    def address(self) -> HostPort: ...
    @property
    def label(self) -> str: ...
    @property
    def weight(self) -> int: ...
    @property
    def effective_weight(self) -> float:
        """The weight during slow start (`weight` once ramped up)."""

    @property
    def ramp_start(self) -> float | None:
        """When its slow start began; None when it is not ramping."""

    @property
    def backup(self) -> bool: ...
    @property
    def max_connections(self) -> int | None: ...
    @property
    def active(self) -> int:
        """Requests in flight to it from this worker."""

    @property
    def latency_ewma(self) -> float:
        """Its answers' latency, a moving average in seconds."""

    @property
    def load(self) -> float | None:
        """0..1 as its agent last reported it, or None."""

    def in_flight(self) -> int:
        """Requests in flight to it from every worker (this one's when alone)."""


class SelectionContext(Protocol):
    """What an algorithm may know about the request being balanced."""

    client_ip: str
    # The hashing key (pool `hash.key`: source IP, a header, a cookie or the path), or None
    # when the request has none (e.g. the header is absent).
    key: bytes | None

    def eligible(self, backend: BackendView) -> bool: ...


# Algorithms written in Python (a user's own, or a test's) subclass these two; compiled classes
# refuse interpreted subclasses unless they allow them.
@mypyc_attr(allow_interpreted_subclasses=True)
class Algorithm(ABC):
    """Base of every balancing algorithm. Subclasses register with `register("name", ...)(cls)`
    after the class: a class decorator would keep mypyc from compiling it as a native class."""

    name: ClassVar[str] = ""

    def __init__(
        self,
        backends: Sequence[BackendView],
        *,
        seed: int = 0,
        clock: Clock | None = None,
        options: PoolConfig | None = None,
    ) -> None:
        self.backends = list(backends)
        # Each worker passes its own seed, so that workers do not move in lockstep.
        self.seed = seed
        self.clock = clock or MonotonicClock()
        self.options = options
        self.prepare()

    def prepare(self) -> None:
        """Build the algorithm's own state from `backends`, `seed` and `options` (called last by
        `__init__`). A hook rather than an `__init__(backends, **kwargs)` of each subclass:
        compiled, `super().__init__(backends, **kwargs)` passes the dict as `seed`."""

    @abstractmethod
    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        """Backends in order of preference for this request."""

    def on_start(self, backend: BackendView) -> None:
        """A request was sent to `backend`."""

    def on_finish(self, backend: BackendView, latency: float, ok: bool) -> None:
        """A request to `backend` finished after `latency` seconds; `ok` is False on failure."""


@mypyc_attr(allow_interpreted_subclasses=True)
class Stepwise(Algorithm):
    """An algorithm that picks one backend at a time: `candidates` offers its pick, then picks
    again among the rest (the state may have moved since), until none is left."""

    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        excluded = 0  # bit i: backends[i] was offered already
        while True:
            index = self.pick(ctx, excluded)
            if index < 0:
                return
            excluded |= 1 << index
            yield self.backends[index]

    @abstractmethod
    def pick(self, ctx: SelectionContext, excluded: int) -> int:
        """The index of the best eligible backend not in `excluded` (a bit set), or -1."""


def smooth_step(
    backends: Sequence[BackendView],
    current: list[float],
    weight_of: Callable[[BackendView], float],
    eligible: Callable[[BackendView], bool],
    excluded: int = 0,
) -> int:
    """One step of smooth weighted round robin (nginx's) among eligible backends of positive
    weight: each adds its weight to its running score, the highest wins and pays the total.
    Returns the winner's index, or -1."""
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


def any_backend(_backend: BackendView) -> bool:
    return True


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(*names: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Register an algorithm class under its config name and any aliases."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = names[0]
        for name in names:
            known = ALGORITHMS.get(name)
            # The same class again is a module imported afresh (a reload of a user's module).
            if known is not None and _where(known) != _where(cls):
                raise ValueError(f"algorithm {name!r} is registered twice")
            ALGORITHMS[name] = cls
        return cls

    return decorate


def _where(cls: type) -> tuple[str, str]:
    return cls.__module__, cls.__qualname__


def registered_names() -> list[str]:
    """Every config name an algorithm answers to, sorted."""
    _load_builtin()
    return sorted(ALGORITHMS)


def get_algorithm(name: str) -> type[Algorithm]:
    """The class of a registered name, or of a user's `package.module:Name` (balancing.custom)."""
    if ":" in name:
        from usher.balancing import custom

        return custom.load(name)
    _load_builtin()
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise KeyError(f"unknown algorithm {name!r} (known: {known})") from None


def _load_builtin() -> None:
    # Imported lazily so that algorithm modules may import this one.
    from usher.balancing import (  # noqa: F401
        hashing,
        latency,
        least,
        random,
        resource,
        round_robin,
    )
