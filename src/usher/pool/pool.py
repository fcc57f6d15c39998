"""A pool: its backends in tiers, and the choice of one for a request.

A pool puts together its backends (usher.pool.backend), a balancing algorithm for the
primaries and one for the backups, session persistence (usher.pool.persistence), and what
usher learns of each backend: active health checks (`set_healthy`), outlier ejection from real
traffic (usher.pool.outlier), slow start (usher.pool.slow_start), connection limits with a
wait queue, a retry budget, and draining. Time comes from the injected clock; nothing here
does I/O except `drain`, which waits.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from usher.balancing import Algorithm, get_algorithm
from usher.clock import Clock
from usher.pool.backend import ADMIN_SOURCE, CONFIG_SOURCE, Backend, BackendSpec, State
from usher.pool.outlier import Outliers
from usher.pool.persistence import (
    Persistence,
    build_persistence,
)
from usher.pool.queue import WaitQueue
from usher.pool.selection import Selection
from usher.pool.slow_start import SlowStart
from usher.state import Budget, installed
from usher.state.local import RETRY_BUDGET_RESERVE, RETRY_BUDGET_ROOM, LocalBudget
from usher.state.shm import SharedBudget, SharedSequence, SharedState
from usher.tls import UpstreamContext

if TYPE_CHECKING:
    from usher.config import BackendConfig, PoolConfig
    from usher.pool.selection import Headers

log = logging.getLogger("usher.health")

# Weight of the latency average given to the newest sample.
LATENCY_EWMA_ALPHA = 0.3


class Pool:
    """A named group of backends with its algorithm, persistence and health."""

    def __init__(self, name: str, config: PoolConfig, clock: Clock, *, seed: int = 0) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.seed = seed
        self.backends = [BackendSpec.of(b).build() for b in config.backends]
        self._algorithm_cls = get_algorithm(config.algorithm)
        # With several workers: the state they share (usher.state); None in one process.
        self.shared: SharedState | None = installed()
        self.persistence: Persistence | None = build_persistence(
            name, config.sticky, clock, self.backends, self.shared
        )
        self.retry_budget: Budget = self._budget(config.retries.budget)
        self.wait_queue = WaitQueue(self)
        # The client TLS context of `config.tls` (usher.tls.UpstreamContext).
        self.upstream_tls = UpstreamContext(config.tls)
        for backend in self.backends:
            backend.connections.configure(config, self.upstream_tls.get, clock)
        # Called with (backend, old status, new status, reason) on every change of state.
        self.on_state_change: list[Callable[[Backend, str, str, str], None]] = []
        self.slow_start = SlowStart(config.slow_start)
        self.outliers = Outliers(self)
        self._rebuild()

    def _rebuild(self) -> None:
        primaries = [b for b in self.backends if not b.backup]
        backups = [b for b in self.backends if b.backup]
        cls = self._algorithm_cls
        kwargs: dict[str, Any] = {"seed": self.seed, "clock": self.clock, "options": self.config}
        primary_kwargs, backup_kwargs = kwargs, kwargs
        if self.shared is not None and cls.name == "round_robin":
            # One position for all workers, so the weights hold over the whole balancer.
            primary_kwargs = {**kwargs, "sequence": self._sequence("primary")}
            backup_kwargs = {**kwargs, "sequence": self._sequence("backup")}
        self._primary: Algorithm = cls(primaries, **primary_kwargs)
        self._backup: Algorithm | None = cls(backups, **backup_kwargs) if backups else None
        if self.persistence is not None:
            self.persistence.rebuild(self.backends)

    # Selection

    def select(self, selection: Selection) -> Backend | None:
        """The backend for the next attempt of a request, or None when none is available.

        Backups are used only when no primary is eligible.
        """
        now = selection.now
        if self.outliers.ejected:
            self.outliers.release(now)
        if self.slow_start.ramping:
            self.slow_start.advance(now)
        if self.config.panic_threshold > 0.0:
            selection.panic = self.outliers.check_panic(now)
        shared = self.shared
        if shared is not None or self.wait_queue.woken or selection.gated:
            self._look(selection)
        for algorithm in (self._primary, self._backup):
            if algorithm is None:
                continue
            preferred = selection.preferred  # a hook's order (usher.hooks) over the algorithm's
            views = algorithm.candidates(selection) if preferred is None else preferred
            for view in views:
                backend = cast(Backend, view)  # the algorithm was built on this pool's backends
                if selection.eligible(backend) and (shared is None or self._admit(backend)):
                    return backend
        return None

    def _look(self, selection: Selection) -> None:
        """With several workers: take on the others' ejections (at most every 10 ms). And
        whether anyone waits in the shared queue or was just woken from the queue of this
        process: then a new request waits behind them."""
        if self.shared is not None:
            self.outliers.follow(selection.now)
        selection.gated = self.wait_queue.gated(selection)

    def _admit(self, backend: Backend) -> bool:
        """With several workers, a backend under a limit is counted in under a lock, so two
        workers never take its last slot at once."""
        limit = backend.max_connections
        slot = backend.shared
        if limit is None or slot is None or self.shared is None:
            return True
        return self.shared.admit(slot.row, slot.worker, backend.active, limit)

    def choose(self, selection: Selection, headers: Headers) -> Backend | None:
        """Like `select`, but a request pinned by persistence keeps its backend while that one
        is eligible."""
        persistence = self.persistence
        if persistence is None or selection.tried:
            return self.select(selection)
        if self.shared is not None or self.wait_queue.woken or selection.gated:
            self._look(selection)
        pinned = persistence.pinned(headers, selection.client_ip)
        if pinned is not None and self._keeps(selection, pinned):
            return pinned
        backend = self.select(selection)
        if backend is not None and pinned is None:
            # Another worker or node may have pinned the key since we looked: the first pin
            # wins while it is eligible (its admission corrects this one's reservation).
            first = persistence.claim(headers, selection.client_ip, backend)
            if first is not None and first is not backend and self._keeps(selection, first):
                return first
        return backend

    def _keeps(self, selection: Selection, pinned: Backend) -> bool:
        """Whether a request pinned to `pinned` goes there."""
        return (
            selection.eligible(pinned)
            and not (pinned.backup and self._any_primary_eligible(selection))
            and (self.shared is None or self._admit(pinned))
        )

    def chosen(self, selection: Selection, headers: Headers, backend: Backend) -> bytes | None:
        """Remember the choice for persistence; returns a Set-Cookie value to send, if any."""
        if self.persistence is None:
            return None
        return self.persistence.chosen(headers, selection.client_ip, backend)

    def _any_primary_eligible(self, selection: Selection) -> bool:
        return any(not b.backup and selection.eligible(b) for b in self.backends)

    def saturated(self, selection: Selection) -> bool:
        """No backend has room, but some would be ready once one has: worth waiting."""
        now = selection.now
        gated = selection.gated
        return any(
            b.ready(now)
            and (not b.has_room() or (gated and b.max_connections is not None))
            and b not in selection.tried
            for b in self.backends
        )

    def wait(self, callback: Callable[[], None], selection: Selection | None = None) -> bool:
        """Queue `callback` for the next free slot; False when the queue is full or off.
        With several workers the queue is one for all (usher.pool.queue): the worker's state
        loop calls `serve_queue`; `selection` (the request's) lets its attempt through."""
        return self.wait_queue.join(callback, selection)

    def unwait(self, callback: Callable[[], None]) -> None:
        self.wait_queue.leave(callback)

    def serve_queue(self) -> None:
        """Wake this worker's first waiter when it heads the shared queue and a backend has
        room."""
        self.wait_queue.serve()

    def follow_shared(self) -> None:
        """What other workers did, taken on (the worker's state loop runs it every 20 ms):
        their ejections, and the queue's head; deposits to the retry budget are settled."""
        if self.shared is None:
            return
        self.retry_budget.flush()
        self.outliers.follow(self.clock.now())
        self.serve_queue()

    def ejected_elsewhere(self, backend: Backend, until: float, now: float, reason: str) -> None:
        """Another worker or node ejected `backend` until `until`: so does this one."""
        self.outliers.ejected_elsewhere(backend, until, now, reason)

    def _sequence(self, tier: str) -> SharedSequence:
        assert self.shared is not None
        return SharedSequence(self.shared, f"rr:{self.name}:{tier}")

    def _budget(self, ratio: float) -> Budget:
        if self.shared is None:
            return LocalBudget(ratio)
        return SharedBudget(
            self.shared, f"rb:{self.name}", ratio, RETRY_BUDGET_RESERVE, RETRY_BUDGET_ROOM
        )

    def algorithm_for(self, backend: Backend) -> Algorithm:
        if backend.backup and self._backup is not None:
            return self._backup
        return self._primary

    # What happens to requests

    def on_start(self, backend: Backend) -> None:
        backend.active += 1
        backend.requests_total += 1
        self.retry_budget.deposit()
        self.algorithm_for(backend).on_start(backend)
        if backend.shared is not None:
            backend.shared.publish(backend)

    def on_finish(self, backend: Backend, latency: float, ok: bool, detail: str = "") -> None:
        backend.active -= 1
        if ok:
            backend.fails = 0
            ewma = backend.latency_ewma
            backend.latency_ewma = (
                latency if ewma == 0.0 else ewma + LATENCY_EWMA_ALPHA * (latency - ewma)
            )
        else:
            self.record_failure(backend, detail)
        self.algorithm_for(backend).on_finish(backend, latency, ok)
        self._released(backend)

    def on_abandon(self, backend: Backend) -> None:
        """The client left before the answer: the request ends without saying anything of the
        backend (no latency sample, no success that would clear its failures)."""
        backend.active -= 1
        self._released(backend)

    def _released(self, backend: Backend) -> None:
        """A request to `backend` ended: publish its count, end a drain, wake a waiter."""
        if backend.shared is not None:
            backend.shared.publish(backend)
        if backend.drained is not None and backend.active == 0:
            backend.drained.set()
        if self.wait_queue.waiters:
            self.wait_queue.wake(backend)

    def record_failure(self, backend: Backend, detail: str = "") -> None:
        """A failure seen on real traffic (connect error, timeout, garbage)."""
        self.outliers.record_failure(backend, detail)

    def record_status(self, backend: Backend, status: int) -> None:
        """An answer's status: consecutive 5xx may eject (passive_health.consecutive_5xx)."""
        self.outliers.record_status(backend, status)

    # Health

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None:
        """The verdict of active health checks changed."""
        if backend.healthy == healthy:
            return
        now = self.clock.now()
        before = backend.status(now)
        backend.healthy = healthy
        if healthy:
            self.slow_start.start(backend, now)
        self.changed(backend, before, reason)

    def changed(self, backend: Backend, before: str, reason: str) -> None:
        after = backend.status(self.clock.now())
        backend.reason = reason
        if before == after:
            return
        log.warning("backend %s in pool %s: %s: %s", backend.label, self.name, after, reason)
        for listener in self.on_state_change:
            listener(backend, before, after, reason)

    # Runtime changes

    def set_state(self, backend: Backend, state: State, reason: str = "by the operator") -> None:
        now = self.clock.now()
        before = backend.status(now)
        was_out = backend.state != "enabled"
        backend.state = state
        if state == "enabled" and was_out:
            self.slow_start.start(backend, now)
        if state != "enabled":
            backend.close_idle()
        if state != "draining" and backend.drained is not None:
            backend.drained.set()  # a later command wins: the waiting drain ends, changing nothing
        self.changed(backend, before, reason)

    def set_weight(self, backend: Backend, weight: int) -> None:
        self.slow_start.set_weight(backend, weight)
        self._rebuild()

    def update(self, specs: Iterable[BackendSpec]) -> list[Backend]:
        """The one door for changes of membership: make the backends `specs` lists as they
        say. One the pool lacks joins (after the others, in order) and ramps up with slow
        start; one it has keeps its live state (counts, health, ejections, idle connections)
        and takes the spec's weight, tier and source; a spec's state and health, when given,
        are set as `set_state` and `set_healthy` do. Returns the backends no spec lists, still
        in the pool: the caller keeps, drains or removes them."""
        now = self.clock.now()
        unlisted = {b.label: b for b in self.backends}
        listed: list[tuple[Backend, BackendSpec]] = []
        rebuild = False
        for spec in specs:
            backend = unlisted.pop(str(spec.address), None)
            if backend is None:
                if self.find(str(spec.address)) is not None:
                    continue  # listed twice: the first spec holds
                backend = spec.build()
                backend.connections.configure(self.config, self.upstream_tls.get, self.clock)
                self.backends.append(backend)
                self.slow_start.start(backend, now)
                rebuild = True
            else:
                backend.source = spec.source
                if (backend.backup, backend.max_connections) != (spec.backup, spec.max_connections):
                    backend.backup = spec.backup
                    backend.max_connections = spec.max_connections
                    rebuild = True
                if backend.weight != spec.weight:
                    self.slow_start.set_weight(backend, spec.weight)
                    rebuild = True
            listed.append((backend, spec))
        if rebuild:
            self._rebuild()
        for backend, spec in listed:
            if spec.state is not None and backend.state != spec.state:
                self.set_state(backend, spec.state, spec.reason)
            if spec.healthy is not None and backend.healthy != spec.healthy:
                self.set_healthy(backend, spec.healthy, spec.reason)
        return list(unlisted.values())

    def add_backend(self, config: BackendConfig, source: str = CONFIG_SOURCE) -> Backend:
        """Add (or, when the pool has it, update) one backend; see `update`."""
        self.update([BackendSpec.of(config, source)])
        backend = self.find(str(config.address))
        assert backend is not None
        return backend

    def remove_backend(self, backend: Backend) -> None:
        self.backends.remove(backend)
        self.outliers.forget(backend)
        self.slow_start.forget(backend)
        backend.close_idle()
        self._rebuild()

    def find(self, label: str) -> Backend | None:
        return next((b for b in self.backends if b.label == label), None)

    async def drain(
        self, backend: Backend, *, timeout: float | None = None, remove: bool = False
    ) -> bool:
        """Stop new requests (and sticky pins) to `backend`, let in-flight ones finish for up
        to `timeout` (default: `drain_timeout`), then disable or remove it. Returns whether it
        drained before the timeout.

        A state set while it waits (enabled, disabled) wins: the drain ends at once and leaves
        the backend as that command put it, in the pool."""
        limit = self.config.drain_timeout if timeout is None else timeout
        self.set_state(backend, "draining", "draining")
        backend.drained = drained = asyncio.Event()
        clean = True
        if backend.active > 0:
            try:
                await asyncio.wait_for(drained.wait(), limit)
            except TimeoutError:
                clean = False
        if backend.drained is drained:
            backend.drained = None
        if backend.state != "draining":
            return clean and backend.active == 0
        reason = "drained" if clean else f"drain timed out with {backend.active} in flight"
        if remove:
            if backend in self.backends:
                self.remove_backend(backend)
            log.warning("backend %s in pool %s: removed: %s", backend.label, self.name, reason)
        else:
            self.set_state(backend, "disabled", reason)
        return clean

    def reconfigure(self, config: PoolConfig) -> list[Backend]:
        """Apply a reloaded pool config. Backends that stay keep their live state (counts,
        health, ejections, idle connections); new ones ramp up with slow start; returns the
        backends the new config dropped, still in the pool: the caller drains and removes them."""
        # The file names them now: the file owns them (source config), in its order.
        unlisted = self.update([BackendSpec.of(bc) for bc in config.backends])
        by_label = {b.label: b for b in self.backends}
        kept = [by_label[str(bc.address)] for bc in config.backends]
        # Discovered backends stay: their source retires them, not the file.
        discovered = [b for b in unlisted if b.source not in (CONFIG_SOURCE, ADMIN_SOURCE)]
        kept += discovered
        dropped = [b for b in unlisted if b not in discovered]
        sticky_changed = config.sticky != self.config.sticky
        if (config.tls, config.send_proxy_protocol) != (
            self.config.tls,
            self.config.send_proxy_protocol,
        ):
            self.upstream_tls.reset(config.tls)
            for backend in kept:
                backend.renew_connections()
        self.config = config
        for backend in kept + dropped:
            backend.connections.configure(config, self.upstream_tls.get, self.clock)
        self.slow_start.duration = config.slow_start
        self._algorithm_cls = get_algorithm(config.algorithm)
        self.backends = kept + dropped
        if sticky_changed:
            self.persistence = build_persistence(
                self.name, config.sticky, self.clock, kept, self.shared
            )
        if self.retry_budget.ratio != config.retries.budget:
            self.retry_budget = self._budget(config.retries.budget)
        self.wait_queue.configure()
        self.outliers.configure(config.passive_health)
        self._rebuild()
        return dropped

    def use_tls_context(self, context: ssl.SSLContext | None) -> None:
        """Take a context freshly built from the files (a reload re-reads them): connections
        made with the previous one (its CA, its client certificate) are not reused."""
        if self.upstream_tls.use(context):
            for backend in self.backends:
                backend.renew_connections()

    @property
    def waiters(self) -> deque[Callable[[], None]]:
        """The requests waiting in this process for a free slot."""
        return self.wait_queue.waiters

    @property
    def panicking(self) -> bool:
        """In panic mode: too few backends ready, requests spread over every enabled one."""
        return self.outliers.panicking

    def ready_count(self) -> int:
        now = self.clock.now()
        return sum(1 for b in self.backends if b.ready(now))

    def __iter__(self) -> Iterator[Backend]:
        return iter(self.backends)

    def __repr__(self) -> str:
        now = self.clock.now()
        counts: dict[str, int] = {}
        for backend in self.backends:
            status = backend.status(now)
            counts[status] = counts.get(status, 0) + 1
        parts = [
            f"{counts[s]} {s}"
            for s in ("healthy", "unhealthy", "draining", "disabled")
            if counts.get(s)
        ]
        active = sum(b.active for b in self.backends)
        n = len(self.backends)
        noun = "backend" if n == 1 else "backends"
        return f"<Pool {self.name} [{n} {noun}: {', '.join(parts) or 'none'} | {active} active]>"
