"""The active-check verdict on a backend, sans-IO: results in, transitions and delays out.

`HealthState` turns check results into healthy/unhealthy transitions (thresholds, hysteresis,
the next delay); it does no I/O and reads no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from usher.config import HealthCheck

# However the jitter falls, checks never run back to back.
MIN_DELAY = 0.001


@dataclass(frozen=True, slots=True)
class Transition:
    """A change of verdict, reported once: the backend is now `healthy` (or not) because..."""

    healthy: bool
    reason: str


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The latest check of a backend, as the admin API shows it (`at` on the injected clock)."""

    ok: bool
    at: float
    detail: str


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class HealthState:
    """The active-check verdict on one backend, from results fed to it (sans-IO).

    A backend starts healthy: a fresh backend takes traffic until checks say otherwise, so a
    start or reload does not wait `healthy_threshold` intervals before serving (nginx and
    HAProxy behave alike once their first check has run; passive health covers the meantime).
    It turns unhealthy after `unhealthy_threshold` failures in a row and healthy again after
    `healthy_threshold` passes in a row; a result of the other kind resets the count, so a
    flapping backend stays where it is.
    """

    __slots__ = ("check", "failures", "healthy", "last", "passes")

    def __init__(self, check: HealthCheck, *, healthy: bool = True) -> None:
        self.check = check
        self.healthy = healthy
        self.passes = 0  # consecutive
        self.failures = 0  # consecutive
        self.last: CheckResult | None = None

    def record(self, ok: bool, detail: str, *, at: float = 0.0) -> Transition | None:
        """Take one result; returns the transition it causes, if any (once per change)."""
        self.last = CheckResult(ok, at, detail)
        if ok:
            self.failures = 0
            self.passes += 1
            threshold = self.check.healthy_threshold
            if not self.healthy and self.passes >= threshold:
                self.healthy = True
                return Transition(True, f"healthy after {_plural(threshold, 'passed check')}")
        else:
            self.passes = 0
            self.failures += 1
            threshold = self.check.unhealthy_threshold
            if self.healthy and self.failures >= threshold:
                self.healthy = False
                reason = f"unhealthy after {_plural(threshold, 'failed check')}: {detail}"
                return Transition(False, reason)
        return None

    def next_delay(self, rng: random.Random) -> float:
        """Seconds until the next check: `interval` (`unhealthy_interval` while down), ±jitter."""
        check = self.check
        base = check.interval
        if not self.healthy and check.unhealthy_interval is not None:
            base = check.unhealthy_interval
        return jittered(base, check.jitter, rng)

    def __repr__(self) -> str:
        verdict = "healthy" if self.healthy else "unhealthy"
        return f"<HealthState {verdict} passes={self.passes} failures={self.failures}>"


def jittered(base: float, jitter: float, rng: random.Random) -> float:
    """`base` spread by up to ±`jitter` of itself, never under `MIN_DELAY`."""
    if jitter <= 0:
        return base
    return max(MIN_DELAY, base * (1.0 + rng.uniform(-jitter, jitter)))
