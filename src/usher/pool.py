"""Pools: the live state of each backend, and the choice of one for a request.

A pool puts together its backends, a balancing algorithm for the primaries and one for the
backups, session persistence, and what usher learns of each backend: active health checks
(`set_healthy`), outlier ejection from real traffic (`record_failure`, `record_status`), slow
start, connection limits with a wait queue, a retry budget, and draining. Time comes from the
injected clock; nothing here does I/O except `drain`, which waits.

A backend's state, as the admin API shows it:

    disabled   the operator took it out
    draining   no new requests or sticky pins; in-flight ones finish
    unhealthy  failing active checks, or ejected for failures on real traffic
    healthy    takes traffic
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal

from usher.balancing import Algorithm, get_algorithm
from usher.clock import Clock
from usher.persistence import Persistence, build_persistence, request_cookie, request_header
from usher.state import Budget, cluster, installed
from usher.state.local import RETRY_BUDGET_RESERVE, RETRY_BUDGET_ROOM, LocalBudget
from usher.state.shm import SharedBudget, SharedQueue, SharedSequence, SharedState
from usher.tls import upstream_context

if TYPE_CHECKING:
    from usher.config import BackendConfig, HostPort, PoolConfig
    from usher.http.codec import Headers, Request
    from usher.shared import Slot

State = Literal["enabled", "draining", "disabled"]
log = logging.getLogger("usher.health")

# Weight of the latency average given to the newest sample.
LATENCY_EWMA_ALPHA = 0.3
# A backend in slow start begins at this share of its weight.
SLOW_START_FLOOR = 0.1
# With several workers, a request looks at the ejections made by the others if it is this long
# since the last look (and the worker's state loop does every 20 ms): an ejection applies in
# every worker before its next request, at a cost of one check per request.
FOLLOW_EJECTIONS = 0.01
# The in-process retry budget, by the name it always had.
RetryBudget = LocalBudget
# The sources of backends that the config file owns; any other is a discovery source's.
CONFIG_SOURCE = "config"
ADMIN_SOURCE = "admin"


class Backend:
    """One backend server and what usher knows of it right now."""

    __slots__ = (
        "active",
        "address",
        "backup",
        "check_rtt",
        "drained",
        "effective_weight",
        "ejections",
        "failed_until",
        "fails",
        "fails_5xx",
        "failures_total",
        "generation",
        "healthy",
        "host",
        "idle",
        "label",
        "last_check",
        "last_ejected_at",
        "latency_ewma",
        "load",
        "max_connections",
        "port",
        "ramp_start",
        "reason",
        "requests_total",
        "shared",
        "source",
        "state",
        "weight",
    )

    def __init__(
        self,
        address: HostPort,
        *,
        weight: int = 1,
        backup: bool = False,
        max_connections: int | None = None,
    ) -> None:
        self.address = address
        self.host = address.host
        self.port = address.port
        self.label = str(address)
        self.weight = weight
        self.effective_weight = float(weight)  # a float from the start: compiled, it is a C double
        self.backup = backup
        self.max_connections = max_connections
        self.state: State = "enabled"
        # Active checks' verdict. A backend no check has failed yet takes traffic.
        self.healthy = True
        self.reason = ""  # why the state is what it is, for logs and the admin API
        self.fails = 0  # consecutive failures seen on real traffic
        self.fails_5xx = 0  # consecutive 5xx answers
        self.failed_until = 0.0  # ejected until then
        self.ejections = 0  # ejections in a row: each one lasts longer
        self.last_ejected_at = -1e18
        self.ramp_start: float | None = None
        self.active = 0
        self.requests_total = 0
        self.failures_total = 0
        self.latency_ewma = 0.0
        self.load: float | None = None  # 0..1 as the backend's agent last reported it
        self.last_check: tuple[bool, float, str] | None = None  # (ok, at, detail)
        # The last passing active check's round trip from this node (the DNS latency policy).
        self.check_rtt: float | None = None
        self.drained: asyncio.Event | None = None
        # With several workers: this worker's cells of the shared counts (usher.shared).
        self.shared: Slot | None = None
        # Idle keep-alive connections to this backend, most recently used last.
        self.idle: list[Any] = []
        # Connections remember the generation they were opened in; a reload that changes how
        # connections are made (tls, PROXY header) starts a new one and the old are not reused.
        self.generation = 0
        # Where it came from: config, admin, or a discovery source (dns:NAME, etcd:PREFIX,
        # file:PATH); a reload keeps discovered backends, the source itself retires them.
        self.source = CONFIG_SOURCE

    def ready(self, now: float) -> bool:
        """May take a new request: enabled, healthy and not ejected."""
        return self.state == "enabled" and self.healthy and now >= self.failed_until

    def in_flight(self) -> int:
        """Requests in flight to this backend in every worker (in this one when alone)."""
        shared = self.shared
        return self.active if shared is None else shared.total()

    def has_room(self) -> bool:
        """Under `max_connections`, counting every worker's requests."""
        limit = self.max_connections
        if limit is None:
            return True
        shared = self.shared
        return (self.active if shared is None else shared.total()) < limit

    def status(self, now: float) -> str:
        if self.state != "enabled":
            return self.state
        return "healthy" if self.healthy and now >= self.failed_until else "unhealthy"

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().close()

    def renew_connections(self) -> None:
        """Connections opened so far must not carry another request (their settings changed)."""
        self.generation += 1
        self.close_idle()

    def __repr__(self) -> str:
        return f"<Backend {self.label} w={self.weight} {self.state} active={self.active}>"


class Selection:
    """The request-side context of one selection: who asks, and which backends were tried."""

    __slots__ = ("client_ip", "gated", "key", "now", "panic", "tried")

    def __init__(self, client_ip: str, now: float, key: bytes | None = None) -> None:
        self.client_ip = client_ip
        self.now = now
        self.key = key
        self.panic = False
        # Requests wait in another worker's queue: backends with a limit are theirs first.
        self.gated = False
        self.tried: list[Backend] = []

    def eligible(self, backend: Backend) -> bool:
        if backend in self.tried or not backend.has_room():
            return False
        if self.gated and backend.max_connections is not None:
            return False
        if self.panic:
            return backend.state == "enabled"
        return backend.ready(self.now)


class Pool:
    """A named group of backends with its algorithm, persistence and health."""

    def __init__(self, name: str, config: PoolConfig, clock: Clock, *, seed: int = 0) -> None:
        self.name = name
        self.config = config
        self.clock = clock
        self.seed = seed
        self.backends = [_backend(b) for b in config.backends]
        self._algorithm_cls = get_algorithm(config.algorithm)
        # With several workers: the state they share (usher.state); None in one process.
        self.shared: SharedState | None = installed()
        self.persistence: Persistence | None = build_persistence(
            name, config.sticky, clock, self.backends, self.shared
        )
        self.retry_budget: Budget = self._budget(config.retries.budget)
        self.queue: SharedQueue | None = self._shared_queue()
        self._tickets: dict[Callable[[], None], int] = {}
        self._granted: int | None = None
        # When to look next at the ejections other workers made (never without shared state).
        passive = config.passive_health
        follows = self.shared is not None and bool(passive.max_fails or passive.consecutive_5xx)
        self._follow_at = -math.inf if follows else math.inf
        # The client TLS context of `config.tls`, handed over by the balancer at start and on
        # each reload (it reads files); built on first use when nobody did.
        self._tls_context: ssl.SSLContext | None = None
        self.waiters: deque[Callable[[], None]] = deque()
        self.panicking = False
        self._cap_warned = False
        self._ejected: list[Backend] = []
        self._ramping: list[Backend] = []
        # Called with (backend, old status, new status, reason) on every change of state.
        self.on_state_change: list[Callable[[Backend, str, str, str], None]] = []
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
        if self._ejected or self._ramping:
            self._refresh(now)
        if self.config.panic_threshold > 0.0:
            selection.panic = self._check_panic(now)
        shared = self.shared
        if shared is not None:
            self._look(selection)
        for algorithm in (self._primary, self._backup):
            if algorithm is None:
                continue
            for backend in algorithm.candidates(selection):
                if selection.eligible(backend) and (shared is None or self._admit(backend)):
                    return backend
        return None

    def _look(self, selection: Selection) -> None:
        """With several workers: take on the others' ejections (at most every 10 ms), and
        whether anyone waits in the shared queue (then a new request waits behind them)."""
        now = selection.now
        if now >= self._follow_at:
            assert self.shared is not None
            self._follow_at = now + FOLLOW_EJECTIONS
            self._follow_ejections(self.shared)
        if self.queue is not None:
            selection.gated = self._granted is None and self.queue.waiting()

    def _admit(self, backend: Backend) -> bool:
        """With several workers, a backend under a limit is counted in under a lock, so two
        workers never take its last slot at once."""
        limit = backend.max_connections
        slot = backend.shared
        if limit is None or slot is None or self.shared is None:
            return True
        return self.shared.admit(slot.row, slot.worker, backend.active, limit)

    def hash_key(self, request: Request, client_ip: bytes) -> bytes | None:
        """The key `consistent_hash` hashes this request on (pool `hash.key`)."""
        if self.config.algorithm != "consistent_hash":
            return None
        options = self.config.hash
        if options.key == "source_ip":
            return client_ip
        if options.key == "path":
            return request.target.partition(b"?")[0]
        name = (options.name or "").encode("latin-1")
        if options.key == "cookie":
            return request_cookie(request.headers, name)
        return request_header(request.headers, name.lower())

    def choose(self, selection: Selection, headers: Headers) -> Backend | None:
        """Like `select`, but a request pinned by persistence keeps its backend while that one
        is eligible."""
        persistence = self.persistence
        if persistence is None or selection.tried:
            return self.select(selection)
        if self.shared is not None:
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

    def wait(self, callback: Callable[[], None]) -> bool:
        """Queue `callback` for the next free slot; False when the queue is full or off.
        With several workers the queue is one for all (first in, first out over every
        worker): the worker's state loop calls `serve_queue`."""
        queue = self.config.queue
        if queue is None or len(self.waiters) >= queue.size:
            return False
        shared = self.queue
        if shared is not None:
            assert self.shared is not None
            ticket = shared.join(self.shared.worker)
            if ticket is None:
                return False
            self._tickets[callback] = ticket
        self.waiters.append(callback)
        return True

    def unwait(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(callback)
        ticket = self._tickets.pop(callback, None)
        if ticket is not None and self.queue is not None and self.shared is not None:
            self.queue.leave(ticket, self.shared.worker)

    def serve_queue(self) -> None:
        """Wake this worker's first waiter when it heads the shared queue and a backend has
        room. It holds the head (a grant) until its attempt has run: no waiter of another
        worker passes it, nor a new request, meanwhile."""
        queue, shared = self.queue, self.shared
        if queue is None or shared is None or not self.waiters or self._granted is not None:
            return
        now = self.clock.now()
        if not any(b.ready(now) and b.has_room() for b in self.backends):
            return
        ticket = queue.grant(shared.worker)
        if ticket is None:
            return
        callback = self.waiters.popleft()
        self._tickets.pop(callback, None)
        self._granted = ticket
        callback()  # schedules the attempt (call_soon), which runs before the release below
        asyncio.get_running_loop().call_soon(self._release_grant, ticket)

    def _release_grant(self, ticket: int) -> None:
        self._granted = None
        if self.queue is not None and self.shared is not None:
            self.queue.done(ticket, self.shared.worker)
        self.serve_queue()

    def follow_shared(self) -> None:
        """What other workers did, taken on (the worker's state loop runs it every 20 ms):
        their ejections, and the queue's head; deposits to the retry budget are settled."""
        if self.shared is None:
            return
        self.retry_budget.flush()
        now = self.clock.now()
        if now >= self._follow_at:
            self._follow_at = now + FOLLOW_EJECTIONS
            self._follow_ejections(self.shared)
        self.serve_queue()

    def _follow_ejections(self, shared: SharedState) -> None:
        now = self.clock.now()
        for backend in self.backends:
            slot = backend.shared
            if slot is not None:
                self.ejected_elsewhere(
                    backend, shared.ejected_until(slot.row), now, "ejected by another worker"
                )

    def ejected_elsewhere(self, backend: Backend, until: float, now: float, reason: str) -> None:
        """Another worker or node ejected `backend` until `until`: so does this one."""
        if until > backend.failed_until and until > now:
            before = backend.status(now)
            backend.failed_until = until
            backend.fails = backend.fails_5xx = 0
            if backend not in self._ejected:
                self._ejected.append(backend)
            self._changed(backend, before, reason)

    def _sequence(self, tier: str) -> SharedSequence:
        assert self.shared is not None
        return SharedSequence(self.shared, f"rr:{self.name}:{tier}")

    def _budget(self, ratio: float) -> Budget:
        if self.shared is None:
            return LocalBudget(ratio)
        return SharedBudget(
            self.shared, f"rb:{self.name}", ratio, RETRY_BUDGET_RESERVE, RETRY_BUDGET_ROOM
        )

    def _shared_queue(self) -> SharedQueue | None:
        if self.shared is None or self.config.queue is None:
            return None
        index = self.shared.queue_index(self.name)
        if index is None:
            log.warning("pool %s: no shared queue left; its queue is this worker's", self.name)
            return None
        return SharedQueue(self.shared, index, self.config.queue.size)

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
        if backend.shared is not None:
            backend.shared.publish(backend)
        if backend.drained is not None and backend.active == 0:
            backend.drained.set()
        if self.waiters:
            self._wake(backend)

    def _wake(self, backend: Backend) -> None:
        """`backend` may have a free slot: the first waiter tries (with a shared queue, when
        it heads it; soon, not inside the finish of the request that freed it)."""
        if self.queue is not None:
            asyncio.get_running_loop().call_soon(self.serve_queue)
        elif backend.has_room():
            self.waiters.popleft()()

    def on_abandon(self, backend: Backend) -> None:
        """The client left before the answer: the request ends without saying anything of the
        backend (no latency sample, no success that would clear its failures)."""
        backend.active -= 1
        if backend.shared is not None:
            backend.shared.publish(backend)
        if backend.drained is not None and backend.active == 0:
            backend.drained.set()
        if self.waiters:
            self._wake(backend)

    def record_failure(self, backend: Backend, detail: str = "") -> None:
        """A failure seen on real traffic (connect error, timeout, garbage)."""
        backend.failures_total += 1
        max_fails = self.config.passive_health.max_fails
        if max_fails == 0:
            return
        backend.fails += 1
        if backend.fails >= max_fails:
            noun = "failure" if backend.fails == 1 else "failures in a row"
            self._eject(backend, f"{backend.fails} {noun}" + (f": {detail}" if detail else ""))

    def record_status(self, backend: Backend, status: int) -> None:
        """An answer's status: consecutive 5xx may eject (passive_health.consecutive_5xx)."""
        limit = self.config.passive_health.consecutive_5xx
        if status < 500:
            backend.fails_5xx = 0
            return
        backend.fails_5xx += 1
        if limit and backend.fails_5xx >= limit:
            self._eject(backend, f"{backend.fails_5xx} answers 5xx in a row (last {status})")

    # Health

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None:
        """The verdict of active health checks changed."""
        if backend.healthy == healthy:
            return
        now = self.clock.now()
        before = backend.status(now)
        backend.healthy = healthy
        if healthy:
            self._start_ramp(backend, now)
        self._changed(backend, before, reason)

    def _eject(self, backend: Backend, reason: str) -> None:
        now = self.clock.now()
        backend.fails = backend.fails_5xx = 0
        if now < backend.failed_until:
            return
        passive = self.config.passive_health
        # The cap counts within the backend's tier: backups do not make room for primaries.
        tier = [b for b in self.backends if b.backup == backend.backup]
        ejected = sum(1 for b in self._ejected if now < b.failed_until and b in tier)
        if ejected + 1 > passive.max_ejection_percent * len(tier):
            if not self._cap_warned:  # said once, not once per failing request
                self._cap_warned = True
                log.warning(
                    "pool %s: max_ejection_percent reached; %s stays in (%s)",
                    self.name,
                    backend.label,
                    reason,
                )
            return
        self._cap_warned = False
        if now - backend.last_ejected_at > passive.max_ejection_time + passive.fail_timeout:
            backend.ejections = 0  # it behaved for long enough: start again from the base time
        backend.ejections += 1
        backend.last_ejected_at = now
        duration = min(passive.fail_timeout * backend.ejections, passive.max_ejection_time)
        before = backend.status(now)
        backend.failed_until = now + duration
        if self.shared is not None and backend.shared is not None:
            self.shared.eject(backend.shared.row, backend.failed_until)
        link = cluster("ejections")
        if link is not None:
            link.eject(self.name, backend.label, backend.failed_until)
        self._ejected.append(backend)
        self._changed(backend, before, f"ejected for {duration:g}s after {reason}")

    def _refresh(self, now: float) -> None:
        """Bring back backends whose ejection ended; move slow-start weights along."""
        for backend in list(self._ejected):
            if now >= backend.failed_until:
                self._ejected.remove(backend)
                if backend.healthy and backend.state == "enabled":
                    self._start_ramp(backend, now)
                    self._changed(backend, "unhealthy", "ejection ended")
        slow_start = self.config.slow_start
        for backend in list(self._ramping):
            start = backend.ramp_start
            if slow_start is None or start is None or now - start >= slow_start:
                backend.effective_weight = float(backend.weight)
                backend.ramp_start = None
                self._ramping.remove(backend)
            else:
                share = max(SLOW_START_FLOOR, (now - start) / slow_start)
                backend.effective_weight = backend.weight * share

    def _start_ramp(self, backend: Backend, now: float) -> None:
        if self.config.slow_start is None:
            return
        backend.ramp_start = now
        backend.effective_weight = backend.weight * SLOW_START_FLOOR
        if backend not in self._ramping:
            self._ramping.append(backend)

    def _check_panic(self, now: float) -> bool:
        healthy = sum(1 for b in self.backends if b.ready(now))
        panic = healthy < self.config.panic_threshold * len(self.backends)
        if panic != self.panicking:
            self.panicking = panic
            if panic:
                log.warning(
                    "pool %s: panic mode: only %d of %d backends healthy, spreading over all",
                    self.name,
                    healthy,
                    len(self.backends),
                )
            else:
                log.warning("pool %s: panic mode over", self.name)
        return panic

    def _changed(self, backend: Backend, before: str, reason: str) -> None:
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
            self._start_ramp(backend, now)
        if state != "enabled":
            backend.close_idle()
        if state != "draining" and backend.drained is not None:
            backend.drained.set()  # a later command wins: the waiting drain ends, changing nothing
        self._changed(backend, before, reason)

    def set_weight(self, backend: Backend, weight: int) -> None:
        backend.weight = weight
        if backend.ramp_start is None:
            backend.effective_weight = float(weight)
        self._rebuild()

    def add_backend(self, config: BackendConfig) -> Backend:
        backend = _backend(config)
        self.backends.append(backend)
        self._start_ramp(backend, self.clock.now())
        self._rebuild()
        return backend

    def remove_backend(self, backend: Backend) -> None:
        self.backends.remove(backend)
        for tracked in (self._ejected, self._ramping):
            if backend in tracked:
                tracked.remove(backend)
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
        now = self.clock.now()
        by_label = {b.label: b for b in self.backends}
        kept: list[Backend] = []
        for bc in config.backends:
            backend = by_label.pop(str(bc.address), None)
            if backend is None:
                backend = _backend(bc)
                self._start_ramp(backend, now)
            else:
                backend.source = CONFIG_SOURCE  # the file names it now: the file owns it
                backend.backup = bc.backup
                backend.max_connections = bc.max_connections
                if backend.weight != bc.weight:
                    backend.weight = bc.weight
                    if backend.ramp_start is None:
                        backend.effective_weight = float(bc.weight)
            kept.append(backend)
        # Discovered backends stay: their source retires them, not the file.
        discovered = [b for b in by_label.values() if b.source not in (CONFIG_SOURCE, ADMIN_SOURCE)]
        kept += discovered
        dropped = [b for b in by_label.values() if b not in discovered]
        sticky_changed = config.sticky != self.config.sticky
        if (config.tls, config.send_proxy_protocol) != (
            self.config.tls,
            self.config.send_proxy_protocol,
        ):
            self._tls_context = None
            for backend in kept:
                backend.renew_connections()
        self.config = config
        self._algorithm_cls = get_algorithm(config.algorithm)
        self.backends = kept + dropped
        if sticky_changed:
            self.persistence = build_persistence(
                self.name, config.sticky, self.clock, kept, self.shared
            )
        if self.retry_budget.ratio != config.retries.budget:
            self.retry_budget = self._budget(config.retries.budget)
        if self.queue is None or config.queue is None or self.queue.size != config.queue.size:
            self.queue = self._shared_queue()
        passive = config.passive_health
        if self.shared is None or not (passive.max_fails or passive.consecutive_5xx):
            self._follow_at = math.inf
        elif self._follow_at == math.inf:
            self._follow_at = -math.inf
        self._rebuild()
        return dropped

    def tls_context(self) -> ssl.SSLContext | None:
        """The context for TLS to the backends; None without `tls`. Raises OSError or
        ssl.SSLError when it has to be built and its files are bad."""
        if self.config.tls is None:
            return None
        if self._tls_context is None:
            self._tls_context = upstream_context(self.config.tls)
        return self._tls_context

    def use_tls_context(self, context: ssl.SSLContext | None) -> None:
        """Take a context freshly built from the files (a reload re-reads them): connections
        made with the previous one (its CA, its client certificate) are not reused."""
        if context is None and self._tls_context is None:
            return
        previous, self._tls_context = self._tls_context, context
        if previous is not None:
            for backend in self.backends:
                backend.renew_connections()

    # Views

    def describe_backend(self, backend: Backend, wall_offset: float = 0.0) -> dict[str, Any]:
        """A backend's live state as the admin API shows it. `wall_offset` turns the clock's
        readings into wall-clock times (wall time minus clock time)."""
        now = self.clock.now()
        status = backend.status(now)
        last = backend.last_check
        return {
            "address": backend.label,
            "source": backend.source,
            "weight": backend.weight,
            "effective_weight": round(backend.effective_weight, 3),
            "backup": backend.backup,
            "max_connections": backend.max_connections,
            "state": status,
            "admin_state": backend.state,
            "healthy": status == "healthy",
            "reason": backend.reason,
            "active": backend.active,
            "requests_total": backend.requests_total,
            "failures_total": backend.failures_total,
            "latency_ewma_ms": round(backend.latency_ewma * 1000, 3),
            "load": backend.load,
            "last_check": (
                None
                if last is None
                else {"ok": last[0], "at": round(last[1] + wall_offset, 3), "detail": last[2]}
            ),
        }

    def describe(self, wall_offset: float = 0.0) -> dict[str, Any]:
        return {
            "name": self.name,
            "algorithm": self.config.algorithm,
            "panic": self.panicking,
            "queued": len(self.waiters),
            "backends": [self.describe_backend(b, wall_offset) for b in self.backends],
        }

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


def _backend(config: BackendConfig) -> Backend:
    return Backend(
        config.address,
        weight=config.weight,
        backup=config.backup,
        max_connections=config.max_connections,
    )


def build_pools(
    configs: Iterable[tuple[str, PoolConfig]], clock: Clock, *, seed: int = 0
) -> dict[str, Pool]:
    return {name: Pool(name, cfg, clock, seed=seed) for name, cfg in configs}
