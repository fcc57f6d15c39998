"""Modelled backends: latency draws, a concurrency limit with its queue, failures, and the
events that slow one down or take it out for a while. Sans-IO: the event loop asks, the model
answers with what happens and when."""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from usher.simulate.scenario import BackendEvent, BackendModel, Latency

# A refused connection fails this long after it was tried (a local RST).
REFUSED_AFTER = 0.0001


def draw(latency: Latency, rng: random.Random) -> float:
    """One latency in seconds from its distribution."""
    if latency.fixed is not None:
        return latency.fixed
    if latency.normal is not None:
        mean, stddev = latency.normal.mean, latency.normal.stddev
        while True:  # truncated at 0: a latency is never negative
            value = rng.gauss(mean, stddev)
            if value >= 0.0:
                return value
    if latency.lognormal is not None:
        return latency.lognormal.median * math.exp(rng.gauss(0.0, latency.lognormal.sigma))
    assert latency.exponential is not None
    return rng.expovariate(1.0 / latency.exponential.mean)


@dataclass(frozen=True, slots=True)
class Condition:
    """How the backend behaves right now."""

    down: bool
    latency: Latency
    fail_rate: float


# Outcomes that are not a status.
REFUSED = -1  # the connection was refused: the backend is down
TIMED_OUT = -2  # no answer within the read timeout (the backend still works on it)

# Called when the request is answered, refused or timed out: (seconds since it arrived, outcome).
Done = Callable[[float, int], None]
Schedule = Callable[[float, Callable[[], None]], None]


class ModelledBackend:
    """One backend as the scenario describes it, served on the simulator's virtual time."""

    def __init__(self, model: BackendModel, rng: random.Random, schedule: Schedule) -> None:
        self.model = model
        self.rng = rng
        self.schedule = schedule  # run a callback after a delay
        self.serving = 0
        self.waiting: deque[tuple[float, Done, float]] = deque()  # (arrival, callback, timeout)
        # Without events the backend never changes: one condition for the whole run.
        self._steady = None if model.events else Condition(False, model.latency, model.fail_rate)

    def condition(self, now: float) -> Condition:
        if self._steady is not None:
            return self._steady
        model = self.model
        down, latency, fail_rate = False, model.latency, model.fail_rate
        for event in model.events:
            if _active(event, now):
                down = down or event.down
                latency = event.latency or latency
                fail_rate = event.fail_rate if event.fail_rate is not None else fail_rate
        return Condition(down, latency, fail_rate)

    def serve(self, now: float, done: Done, timeout: float) -> None:
        """A request arrives; `done` is called once, when it is answered, refused or timed out
        (`timeout` after it arrived; a request still queued then times out when it would have
        started)."""
        if self.condition(now).down:
            self.schedule(REFUSED_AFTER, lambda: done(REFUSED_AFTER, REFUSED))
            return
        limit = self.model.concurrency
        if limit is not None and self.serving >= limit:
            self.waiting.append((now, done, timeout))
            return
        self._start(now, now, done, timeout)

    def _start(self, now: float, arrived: float, done: Done, timeout: float) -> None:
        left = timeout - (now - arrived)
        if left <= 0.0:
            done(now - arrived, TIMED_OUT)
            self._next(now)
            return
        condition = self.condition(now)
        service = draw(condition.latency, self.rng)
        failed = condition.fail_rate > 0.0 and self.rng.random() < condition.fail_rate
        status = self.model.fail_status if failed else 200
        self.serving += 1
        end = now + service

        def finish() -> None:
            self.serving -= 1
            if service <= left:
                done(end - arrived, status)
            self._next(end)

        if service > left:
            self.schedule(left, lambda: done(timeout, TIMED_OUT))
        self.schedule(service, finish)

    def _next(self, now: float) -> None:
        if self.waiting:
            arrived, done, timeout = self.waiting.popleft()
            self._start(now, arrived, done, timeout)

    def check(self, now: float, timeout: float) -> tuple[bool, str]:
        """An active health check: it fails while the backend is down or slower than `timeout`."""
        condition = self.condition(now)
        if condition.down:
            return False, "connection refused"
        if draw(condition.latency, self.rng) > timeout:
            return False, f"no answer within {timeout * 1000:g}ms"
        return True, "ok"


def _active(event: BackendEvent, now: float) -> bool:
    return event.at <= now and (event.until is None or now < event.until)


class SharedCpu:
    """`cores` servers in front of every backend, taking requests first come first served."""

    def __init__(self, cores: int, per_request: float, schedule: Schedule) -> None:
        self.cores = cores
        self.per_request = per_request
        self.schedule = schedule
        self.busy = 0
        self.waiting: deque[Callable[[], None]] = deque()

    def run(self, then: Callable[[], None]) -> None:
        """Take `per_request` of CPU (after waiting for a core), then call `then`."""
        if self.busy >= self.cores:
            self.waiting.append(then)
            return
        self._start(then)

    def _start(self, then: Callable[[], None]) -> None:
        self.busy += 1

        def done() -> None:
            self.busy -= 1
            if self.waiting:
                self._start(self.waiting.popleft())
            then()

        self.schedule(self.per_request, done)
