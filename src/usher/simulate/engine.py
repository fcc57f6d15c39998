"""The discrete-event replay: usher's own pool (algorithm, persistence, passive ejection, slow
start, connection limits and queue, retry budget), active health verdicts (HealthState) and
rate limits (LocalRateStore), all on a ManualClock that jumps from event to event.

The request path follows the proxy's (usher.http.proxy `_attempt`): choose a backend, count it
started, and on the outcome finish it, retry on another one (connect failures always; statuses
in `retries.on` within the budget), queue while every backend is full, or answer an error.
"""

from __future__ import annotations

import heapq
import itertools
import random
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from usher.clock import ManualClock
from usher.config import DEFAULT_RATE_TABLE_SIZE, Config, PoolConfig, parse_address
from usher.health import HealthState
from usher.limits import LocalRateStore
from usher.pool import Backend, Pool, Selection
from usher.simulate.models import REFUSED, TIMED_OUT, ModelledBackend, SharedCpu
from usher.simulate.scenario import Scenario

# What usher's own answers (429, 503 without a backend) take to reach the client: never zero,
# or a closed-loop client refused at once would ask again at the same instant forever.
LOCAL_ANSWER = 0.0001
# In-flight counts are sampled this often (seconds of virtual time) for the plots.
SAMPLE_EVERY = 0.05


class EventLoop:
    """A heap of timed callbacks on a ManualClock; equal times run in the order scheduled."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: float, callback: Callable[[], None]) -> None:
        now = self.clock.now()
        heapq.heappush(self._heap, (max(when, now), next(self._order), callback))

    def after(self, delay: float, callback: Callable[[], None]) -> None:
        self.at(self.clock.now() + delay, callback)

    def run(self, until: float) -> int:
        """Run every event due up to `until`, then leave the clock there; returns how many ran."""
        heap, clock = self._heap, self.clock
        ran = 0
        while heap and heap[0][0] <= until:
            when, _, callback = heapq.heappop(heap)
            clock.advance(when - clock.now())
            callback()
            ran += 1
        if until > clock.now():
            clock.advance(until - clock.now())
        return ran

    def __len__(self) -> int:
        return len(self._heap)


@dataclass
class RunResult:
    """What one algorithm's replay measured."""

    algorithm: str
    duration: float
    backends: list[str]
    latencies: array[float] = field(default_factory=lambda: array("d"))  # per answered request
    statuses: dict[int, int] = field(default_factory=dict)
    attempts: dict[str, int] = field(default_factory=dict)  # requests sent, per backend
    retries: int = 0
    rejected: int = 0  # refused by the rate limit (429)
    state_changes: list[tuple[float, str, str, str]] = field(default_factory=list)
    # Per time bucket: requests sent to each backend.
    share_series: list[dict[str, int]] = field(default_factory=list)
    # (time, in flight per backend in backend order), every SAMPLE_EVERY.
    in_flight: list[tuple[float, list[int]]] = field(default_factory=list)
    events: int = 0


class _Request:
    __slots__ = (
        "attempts_left",
        "backend",
        "client",
        "connect_failed",
        "retried_status",
        "selection",
        "started",
    )

    def __init__(self, client: int, selection: Selection, attempts: int, started: float) -> None:
        self.client = client
        self.selection = selection
        self.attempts_left = attempts
        self.started = started
        self.backend: Backend | None = None
        self.retried_status = 0
        self.connect_failed = False


class Replay:
    """One algorithm replayed over the scenario."""

    def __init__(
        self,
        scenario: Scenario,
        config: Config,
        pool_name: str,
        algorithm: str,
        *,
        on_progress: Callable[[float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.clock = ManualClock()
        self.loop = EventLoop(self.clock)
        pool_config: PoolConfig = config.pools[pool_name].model_copy(
            update={"algorithm": algorithm}
        )
        self.pool = Pool(pool_name, pool_config, self.clock, seed=scenario.seed)
        self.on_progress = on_progress
        seed = scenario.seed
        self.rng = random.Random(f"{seed}-arrivals")
        by_address = {_key(address): model for address, model in scenario.backends.items()}
        self.models: dict[Backend, ModelledBackend] = {}
        for backend in self.pool.backends:
            rng = random.Random(f"{seed}-{backend.label}")
            self.models[backend] = ModelledBackend(by_address[backend.label], rng, self.loop.after)
        self.result = RunResult(algorithm, scenario.duration, [b.label for b in self.pool.backends])
        self.result.attempts = {b.label: 0 for b in self.pool.backends}
        self.pool.on_state_change.append(self._state_changed)
        self.rate_limit = _rate_limit(config, pool_name)
        machine = scenario.machine
        self.cpu = (
            None
            if machine is None
            else SharedCpu(machine.cores, machine.cpu_per_request, self.loop.after)
        )
        self.cookies: dict[int, list[tuple[bytes, bytes]]] = {}
        self.client_ips = [_client_ip(i) for i in range(scenario.clients)]
        self._bucket_counts: dict[str, int] = {}
        self._bucket_end = scenario.bucket

    # The run

    def run(self) -> RunResult:
        scenario = self.scenario
        arrivals = scenario.arrivals
        if arrivals.concurrency is not None:
            for n in range(arrivals.concurrency):
                client = n % scenario.clients
                # Clients start spread over the first millisecond, not all in one instant.
                self.loop.at(self.rng.uniform(0.0, 0.001), partial(self._send, client))
        else:
            self.loop.at(0.0, self._open_arrival)
        self._schedule_health_checks()
        self.loop.at(0.0, self._sample)
        step = min(scenario.bucket, scenario.duration)
        t = 0.0
        while t < scenario.duration:
            t = min(t + step, scenario.duration)
            self.result.events += self.loop.run(t)
            self._close_bucket(t)
            if self.on_progress is not None:
                self.on_progress(t)
        return self.result

    def _open_arrival(self) -> None:
        assert self.scenario.arrivals.rate is not None
        self._send(self.rng.randrange(self.scenario.clients))
        self.loop.after(self.rng.expovariate(self.scenario.arrivals.rate), self._open_arrival)

    def _sample(self) -> None:
        self.result.in_flight.append((self.clock.now(), [b.active for b in self.pool.backends]))
        self.loop.after(SAMPLE_EVERY, self._sample)

    def _close_bucket(self, t: float) -> None:
        while t >= self._bucket_end - 1e-12:
            self.result.share_series.append(self._bucket_counts)
            self._bucket_counts = {}
            self._bucket_end += self.scenario.bucket

    # A request's life, as in the proxy

    def _send(self, client: int) -> None:
        now = self.clock.now()
        ip = self.client_ips[client]
        if self.rate_limit is not None and self.rate_limit.take(ip, now) > 0.0:
            self.result.rejected += 1
            self.loop.after(LOCAL_ANSWER, partial(self._answer_locally, client, now, 429))
            return
        pool = self.pool
        # The hash key of consistent_hash on source_ip; other keys have no model here.
        selection = Selection(ip, now, ip.encode())
        request = _Request(client, selection, pool.config.retries.attempts + 1, now)
        self._attempt(request)

    def _attempt(self, request: _Request) -> None:
        pool, now = self.pool, self.clock.now()
        selection = request.selection
        selection.now = now
        headers = self.cookies.get(request.client, [])
        backend = pool.choose(selection, headers) if request.attempts_left > 0 else None
        if backend is None:
            if request.retried_status:
                self._finish(request, request.retried_status)
            elif request.connect_failed:
                self._finish(request, 502)  # no backend could be reached
            elif request.attempts_left > 0 and pool.saturated(selection) and self._queue(request):
                return
            else:  # no backend is available
                self.loop.after(LOCAL_ANSWER, partial(self._finish, request, 503))
            return
        request.attempts_left -= 1
        selection.tried.append(backend)
        request.backend = backend
        cookie = pool.chosen(selection, headers, backend)
        if cookie is not None:
            name, _, value = cookie.partition(b";")[0].partition(b"=")
            self.cookies[request.client] = [(b"cookie", name + b"=" + value)]
        pool.on_start(backend)
        self.result.attempts[backend.label] += 1
        self._bucket_counts[backend.label] = self._bucket_counts.get(backend.label, 0) + 1
        model = self.models[backend]

        def send() -> None:
            model.serve(
                self.clock.now(),
                lambda latency, outcome: self._outcome(
                    request, backend, self.clock.now() - sent, outcome
                ),
                pool.config.timeouts.read - (self.clock.now() - sent),
            )

        sent = now
        if self.cpu is None:
            send()
        else:
            self.cpu.run(send)

    def _outcome(self, request: _Request, backend: Backend, latency: float, outcome: int) -> None:
        pool = self.pool
        if outcome == REFUSED:  # a connect failure: always retried
            pool.on_finish(backend, latency, False, "connection refused")
            if request.attempts_left > 0:
                self.result.retries += 1
            request.connect_failed = True
            self._attempt(request)
            return
        if outcome == TIMED_OUT:
            pool.on_finish(backend, latency, False, "read timeout")
            self._finish(request, 504)
            return
        status = outcome
        pool.record_status(backend, status)
        retries = pool.config.retries
        if status in retries.on and request.attempts_left > 0 and pool.retry_budget.withdraw():
            pool.on_finish(backend, latency, True)
            request.retried_status = status
            self.result.retries += 1
            self._attempt(request)
            return
        pool.on_finish(backend, latency, True)
        self._finish(request, status)

    def _queue(self, request: _Request) -> bool:
        pool = self.pool
        queue = pool.config.queue
        waiting = [True]

        def dequeued() -> None:
            if waiting[0]:
                waiting[0] = False
                self.loop.after(0.0, lambda: self._attempt(request))

        def timed_out() -> None:
            if waiting[0]:
                waiting[0] = False
                pool.unwait(dequeued)
                self._finish(request, 503)

        if queue is None or not pool.wait(dequeued):
            return False
        self.loop.after(queue.timeout, timed_out)
        return True

    def _finish(self, request: _Request, status: int) -> None:
        now = self.clock.now()
        self._record(now - request.started, status)
        self._next_from(request.client, now)

    def _answer_locally(self, client: int, started: float, status: int) -> None:
        now = self.clock.now()
        self._record(now - started, status)
        self._next_from(client, now)

    def _record(self, latency: float, status: int) -> None:
        result = self.result
        result.latencies.append(latency)
        result.statuses[status] = result.statuses.get(status, 0) + 1

    def _next_from(self, client: int, now: float) -> None:
        arrivals = self.scenario.arrivals
        if arrivals.concurrency is None:
            return  # open loop: arrivals do not wait for answers
        # Scheduled, even without think time: what this answer woke (a queued request) goes
        # first, as it would in the proxy, before the client's next request arrives.
        self.loop.after(arrivals.think, partial(self._send, client))

    # Health

    def _schedule_health_checks(self) -> None:
        check = self.pool.config.health_check
        if check is None:
            return
        for backend in self.pool.backends:
            state = HealthState(check)
            first = self.rng.uniform(0.0, check.interval)
            self.loop.at(first, partial(self._check, backend, state))

    def _check(self, backend: Backend, state: HealthState) -> None:
        check = state.check
        now = self.clock.now()
        ok, detail = self.models[backend].check(now, check.timeout)
        backend.last_check = (ok, now, detail)
        transition = state.record(ok, detail, at=now)
        if transition is not None:
            self.pool.set_healthy(backend, transition.healthy, transition.reason)
        self.loop.after(state.next_delay(self.rng), partial(self._check, backend, state))

    def _state_changed(self, backend: Backend, before: str, after: str, reason: str) -> None:
        self.result.state_changes.append((self.clock.now(), backend.label, after, reason))


def _rate_limit(config: Config, pool_name: str) -> LocalRateStore | None:
    """The rate limit of the first listener that serves the pool (source-IP or one bucket)."""
    for listener in config.listeners:
        pools = {listener.pool, *(route.pool for route in listener.routes)}
        if pool_name not in pools:
            continue
        limits = listener.limits
        if limits.rate is None:
            return None
        burst = limits.burst if limits.burst is not None else max(1.0, limits.rate)
        return LocalRateStore(limits.rate, burst, DEFAULT_RATE_TABLE_SIZE)
    return None


def _client_ip(n: int) -> str:
    return f"10.{(n >> 16) & 255}.{(n >> 8) & 255}.{n & 255}"


def _key(address: str) -> str:
    return str(parse_address(address))
