"""Pools: the live state of each backend, and the choice of one for a request.

A pool puts together its backends, a balancing algorithm for the primaries and one for the
backups, and passive health (a backend that fails `max_fails` times in a row is out for
`fail_timeout`). Time comes from the injected clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

from usher.balancing import Algorithm, get_algorithm
from usher.clock import Clock

if TYPE_CHECKING:
    from usher.config import HostPort, PoolConfig

State = Literal["enabled", "draining", "disabled"]

# Weight of the latency average given to the newest sample.
LATENCY_EWMA_ALPHA = 0.3


class Backend:
    """One backend server and what usher knows of it right now."""

    __slots__ = (
        "active",
        "address",
        "backup",
        "effective_weight",
        "failed_until",
        "fails",
        "failures_total",
        "healthy",
        "host",
        "idle",
        "label",
        "latency_ewma",
        "port",
        "requests_total",
        "state",
        "weight",
    )

    def __init__(self, address: HostPort, *, weight: int = 1, backup: bool = False) -> None:
        self.address = address
        self.host = address.host
        self.port = address.port
        self.label = str(address)
        self.weight = weight
        self.effective_weight = weight
        self.backup = backup
        self.state: State = "enabled"
        self.healthy = True  # the verdict of active health checks; none run yet means healthy
        self.fails = 0  # consecutive failures seen on real traffic
        self.failed_until = 0.0
        self.active = 0
        self.requests_total = 0
        self.failures_total = 0
        self.latency_ewma = 0.0
        # Idle keep-alive connections to this backend, most recently used last.
        self.idle: list[Any] = []

    def ready(self, now: float) -> bool:
        """May take a new request: enabled, healthy and not marked failed."""
        return self.state == "enabled" and self.healthy and now >= self.failed_until

    def __repr__(self) -> str:
        return f"<Backend {self.label} w={self.weight} {self.state} active={self.active}>"


class Selection:
    """The request-side context of one selection: who asks, and which backends were tried."""

    __slots__ = ("client_ip", "now", "tried")

    def __init__(self, client_ip: str, now: float) -> None:
        self.client_ip = client_ip
        self.now = now
        self.tried: list[Backend] = []

    def eligible(self, backend: Backend) -> bool:
        return backend not in self.tried and backend.ready(self.now)


class Pool:
    """A named group of backends with its algorithm and passive health."""

    def __init__(self, name: str, config: PoolConfig, clock: Clock, *, seed: int = 0) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.seed = seed
        self.backends = [
            Backend(b.address, weight=b.weight, backup=b.backup) for b in config.backends
        ]
        self._algorithm_cls = get_algorithm(config.algorithm)
        self._rebuild()

    def _rebuild(self) -> None:
        primaries = [b for b in self.backends if not b.backup]
        backups = [b for b in self.backends if b.backup]
        self._primary: Algorithm = self._algorithm_cls(primaries, seed=self.seed)
        self._backup: Algorithm | None = (
            self._algorithm_cls(backups, seed=self.seed) if backups else None
        )

    def select(self, selection: Selection) -> Backend | None:
        """The backend for the next attempt of a request, or None when none is available.

        Backups are used only when no primary is eligible.
        """
        for algorithm in (self._primary, self._backup):
            if algorithm is None:
                continue
            for backend in algorithm.candidates(selection):
                if selection.eligible(backend):
                    return backend
        return None

    def algorithm_for(self, backend: Backend) -> Algorithm:
        if backend.backup and self._backup is not None:
            return self._backup
        return self._primary

    def on_start(self, backend: Backend) -> None:
        backend.active += 1
        backend.requests_total += 1
        self.algorithm_for(backend).on_start(backend)

    def on_finish(self, backend: Backend, latency: float, ok: bool) -> None:
        backend.active -= 1
        if ok:
            backend.fails = 0
            ewma = backend.latency_ewma
            backend.latency_ewma = (
                latency if ewma == 0.0 else ewma + LATENCY_EWMA_ALPHA * (latency - ewma)
            )
        else:
            self.record_failure(backend)
        self.algorithm_for(backend).on_finish(backend, latency, ok)

    def record_failure(self, backend: Backend) -> None:
        """A failure seen on real traffic (connect error, timeout, garbage)."""
        backend.failures_total += 1
        passive = self.config.passive_health
        if passive.max_fails == 0:
            return
        backend.fails += 1
        if backend.fails >= passive.max_fails:
            backend.fails = 0
            backend.failed_until = self.clock.now() + passive.fail_timeout

    def ready_count(self) -> int:
        now = self.clock.now()
        return sum(1 for b in self.backends if b.ready(now))

    def __iter__(self) -> Any:
        return iter(self.backends)

    def __repr__(self) -> str:
        now = self.clock.now()
        ready = sum(1 for b in self.backends if b.ready(now))
        parts = [f"{ready} ready"]
        for state in ("draining", "disabled"):
            count = sum(1 for b in self.backends if b.state == state)
            if count:
                parts.append(f"{count} {state}")
        active = sum(b.active for b in self.backends)
        n = len(self.backends)
        noun = "backend" if n == 1 else "backends"
        return f"<Pool {self.name} [{n} {noun}: {', '.join(parts)} | {active} active]>"


def build_pools(
    configs: Iterable[tuple[str, PoolConfig]], clock: Clock, *, seed: int = 0
) -> dict[str, Pool]:
    return {name: Pool(name, cfg, clock, seed=seed) for name, cfg in configs}
