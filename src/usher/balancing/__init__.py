"""The selection interface and the registry of balancing algorithms, by their config names.

An algorithm is built from a pool's backend list and answers `candidates(ctx)`: backends in
order of preference. It knows nothing of health or discovery: `ctx.eligible(backend)` says
which backends the pool will accept right now (ready, not yet tried for this request), and the
caller skips any candidate that is not eligible. Stateful algorithms learn from `on_start` and
`on_finish`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, ClassVar, Protocol

if TYPE_CHECKING:
    from usher.pool import Backend


class SelectionContext(Protocol):
    """What an algorithm may know about the request being balanced."""

    client_ip: str

    def eligible(self, backend: Backend) -> bool: ...


class Algorithm(ABC):
    """Base of every balancing algorithm. Subclasses register with `@register("name", ...)`."""

    name: ClassVar[str] = ""

    def __init__(self, backends: Sequence[Backend], *, seed: int = 0) -> None:
        self.backends = list(backends)
        self.seed = seed

    @abstractmethod
    def candidates(self, ctx: SelectionContext) -> Iterator[Backend]:
        """Backends in order of preference for this request."""

    def on_start(self, backend: Backend) -> None:
        """A request was sent to `backend`."""

    def on_finish(self, backend: Backend, latency: float, ok: bool) -> None:
        """A request to `backend` finished after `latency` seconds; `ok` is False on failure."""


ALGORITHMS: dict[str, type[Algorithm]] = {}


def register(*names: str) -> Callable[[type[Algorithm]], type[Algorithm]]:
    """Register an algorithm class under its config name and any aliases."""

    def decorate(cls: type[Algorithm]) -> type[Algorithm]:
        cls.name = names[0]
        for name in names:
            if name in ALGORITHMS:
                raise ValueError(f"algorithm {name!r} is registered twice")
            ALGORITHMS[name] = cls
        return cls

    return decorate


def registered_names() -> list[str]:
    """Every config name an algorithm answers to, sorted."""
    _load_builtin()
    return sorted(ALGORITHMS)


def get_algorithm(name: str) -> type[Algorithm]:
    _load_builtin()
    try:
        return ALGORITHMS[name]
    except KeyError:
        known = ", ".join(sorted(ALGORITHMS))
        raise KeyError(f"unknown algorithm {name!r} (known: {known})") from None


def _load_builtin() -> None:
    # Imported lazily so that algorithm modules may import this one.
    from usher.balancing import round_robin  # noqa: F401
