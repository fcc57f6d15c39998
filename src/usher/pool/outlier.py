"""Passive health: what real traffic says of a pool's backends.

Failures in a row (`passive_health.max_fails`) or 5xx answers in a row (`consecutive_5xx`)
eject a backend for `fail_timeout`; each ejection in a row lasts longer, up to
`max_ejection_time`, and no more than `max_ejection_percent` of a tier is out at once. With
several workers (or nodes) an ejection made by one applies in all. Panic mode spreads requests
over every enabled backend when too few are ready (`panic_threshold`).
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

from usher.pool.backend import Backend
from usher.state import cluster

if TYPE_CHECKING:
    from usher.config import PassiveHealth
    from usher.pool.pool import Pool

log = logging.getLogger("usher.health")

# With several workers, a request looks at the ejections made by the others if it is this long
# since the last look (and the worker's state loop does every 20 ms): an ejection applies in
# every worker before its next request, at a cost of one check per request.
FOLLOW_EJECTIONS = 0.01


class Outliers:
    """The ejections of one pool's backends, and whether it panics."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.ejected: list[Backend] = []
        self.panicking = False
        self._cap_warned = False
        # When to look next at the ejections other workers made (never without shared state).
        self.follow_at = math.inf
        self.configure(pool.config.passive_health)

    def configure(self, passive: PassiveHealth) -> None:
        """The pool's config is new: follow the other workers' ejections when they may eject."""
        if self.pool.shared is None or not (passive.max_fails or passive.consecutive_5xx):
            self.follow_at = math.inf
        elif self.follow_at == math.inf:
            self.follow_at = -math.inf

    def record_failure(self, backend: Backend, detail: str = "") -> None:
        """A failure seen on real traffic (connect error, timeout, garbage)."""
        backend.failures_total += 1
        max_fails = self.pool.config.passive_health.max_fails
        if max_fails == 0:
            return
        backend.fails += 1
        if backend.fails >= max_fails:
            noun = "failure" if backend.fails == 1 else "failures in a row"
            self.eject(backend, f"{backend.fails} {noun}" + (f": {detail}" if detail else ""))

    def record_status(self, backend: Backend, status: int) -> None:
        """An answer's status: consecutive 5xx may eject (passive_health.consecutive_5xx)."""
        limit = self.pool.config.passive_health.consecutive_5xx
        if status < 500:
            backend.fails_5xx = 0
            return
        backend.fails_5xx += 1
        if limit and backend.fails_5xx >= limit:
            self.eject(backend, f"{backend.fails_5xx} answers 5xx in a row (last {status})")

    def eject(self, backend: Backend, reason: str) -> None:
        pool = self.pool
        now = pool.clock.now()
        backend.fails = backend.fails_5xx = 0
        if now < backend.failed_until:
            return
        passive = pool.config.passive_health
        # The cap counts within the backend's tier: backups do not make room for primaries.
        tier = [b for b in pool.backends if b.backup == backend.backup]
        ejected = sum(1 for b in self.ejected if now < b.failed_until and b in tier)
        if ejected + 1 > passive.max_ejection_percent * len(tier):
            if not self._cap_warned:  # said once, not once per failing request
                self._cap_warned = True
                log.warning(
                    "pool %s: max_ejection_percent reached; %s stays in (%s)",
                    pool.name,
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
        if pool.shared is not None and backend.shared is not None:
            pool.shared.eject(backend.shared.row, backend.failed_until)
        link = cluster("ejections")
        if link is not None:
            link.eject(pool.name, backend.label, backend.failed_until)
        self.ejected.append(backend)
        pool.changed(backend, before, f"ejected for {duration:g}s after {reason}")

    def release(self, now: float) -> None:
        """Bring back the backends whose ejection ended (they ramp up with slow start)."""
        pool = self.pool
        for backend in list(self.ejected):
            if now >= backend.failed_until:
                self.ejected.remove(backend)
                if backend.healthy and backend.state == "enabled":
                    pool.slow_start.start(backend, now)
                    pool.changed(backend, "unhealthy", "ejection ended")

    def follow(self, now: float) -> None:
        """With several workers: take on the others' ejections (at most every 10 ms)."""
        shared = self.pool.shared
        if now < self.follow_at or shared is None:
            return
        self.follow_at = now + FOLLOW_EJECTIONS
        at = self.pool.clock.now()
        for backend in self.pool.backends:
            slot = backend.shared
            if slot is not None:
                self.ejected_elsewhere(
                    backend, shared.ejected_until(slot.row), at, "ejected by another worker"
                )

    def ejected_elsewhere(self, backend: Backend, until: float, now: float, reason: str) -> None:
        """Another worker or node ejected `backend` until `until`: so does this one."""
        if until > backend.failed_until and until > now:
            before = backend.status(now)
            backend.failed_until = until
            backend.fails = backend.fails_5xx = 0
            if backend not in self.ejected:
                self.ejected.append(backend)
            self.pool.changed(backend, before, reason)

    def check_panic(self, now: float) -> bool:
        """Whether too few backends are ready (`panic_threshold`); said when it changes."""
        pool = self.pool
        healthy = sum(1 for b in pool.backends if b.ready(now))
        panic = healthy < pool.config.panic_threshold * len(pool.backends)
        if panic != self.panicking:
            self.panicking = panic
            if panic:
                log.warning(
                    "pool %s: panic mode: only %d of %d backends healthy, spreading over all",
                    pool.name,
                    healthy,
                    len(pool.backends),
                )
            else:
                log.warning("pool %s: panic mode over", pool.name)
        return panic

    def forget(self, backend: Backend) -> None:
        """`backend` left the pool."""
        if backend in self.ejected:
            self.ejected.remove(backend)
