"""Prometheus metrics: the data plane bumps plain dicts (`Metrics`); a custom collector turns
them, and the pools' live state, into metric families only when `/metrics` is scraped.

Names and labels are a contract (design §5). Worker processes each keep a `Metrics`; the
control process sums their `snapshot()`s with `merge` and serves `Metrics.from_snapshot(...)`.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, TypedDict

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from usher.pool import Pool

# Upper bounds (seconds) of the latency histograms: Prometheus' defaults. Fixed, so that the
# histograms of several workers add up bucket by bucket.
BUCKETS: Final[tuple[float, ...]] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SLOTS: Final = len(BUCKETS) + 1  # the finite buckets, then +Inf
# `le` as prometheus_client writes it (its floatToGoString; repr for bounds like these).
_LE: Final = (*(repr(b) for b in BUCKETS), "+Inf")

BACKEND_STATES: Final = ("healthy", "unhealthy", "draining", "disabled")

# The counters: exposition name, Metrics attribute, label names, help.
COUNTERS: Final = (
    (
        "usher_requests_total",
        "requests_total",
        ("listener", "pool", "backend", "code"),
        "Finished requests, by the status code sent to the client.",
    ),
    (
        "usher_retries_total",
        "retries_total",
        ("pool",),
        "Requests sent again to another backend.",
    ),
    (
        "usher_rejected_total",
        "rejected_total",
        ("listener", "reason"),
        "Requests refused by usher itself, by reason.",
    ),
    (
        "usher_bytes_total",
        "bytes_total",
        ("listener", "direction"),
        "Bytes received from (in) and sent to (out) clients.",
    ),
    (
        "usher_connections_total",
        "connections_total",
        ("listener", "pool", "backend", "result"),
        "Finished layer-4 connections (tcp, tls_passthrough) and UDP sessions, by how they ended.",
    ),
    (
        "usher_health_checks_total",
        "health_checks_total",
        ("pool", "backend", "result"),
        "Active health checks, by result.",
    ),
    (
        "usher_dns_queries_total",
        "dns_queries_total",
        ("listener", "record", "policy", "rcode"),
        "DNS queries answered, by record (empty: no configured name), policy and rcode.",
    ),
    (
        "usher_dns_answers_total",
        "dns_answers_total",
        ("listener", "record", "pool", "backend"),
        "Addresses given in DNS answers, by record and the site (pool) and backend they name.",
    ),
    (
        "usher_dns_rate_limited_total",
        "dns_rate_limited_total",
        ("listener", "action"),
        "DNS answers held back by response-rate limiting: dropped, or slipped (sent truncated).",
    ),
    (
        "usher_hook_errors_total",
        "hook_errors_total",
        ("hook", "phase"),
        "Hook calls that raised, returned what they may not, or overran their timeout.",
    ),
)
HISTOGRAMS: Final = (
    (
        "usher_request_duration_seconds",
        "request_duration",
        ("listener", "pool"),
        "Time from a request's head to the end of its answer.",
    ),
    (
        "usher_upstream_connect_duration_seconds",
        "connect_duration",
        ("pool", "backend"),
        "Time to open a new connection to a backend.",
    ),
    (
        "usher_hook_seconds",
        "hook_seconds",
        ("hook", "phase"),
        "Time spent in a hook's phase (an async one: until it is done).",
    ),
)


class CounterSeries(TypedDict):
    labels: list[str]
    value: int


class HistogramSeries(TypedDict):
    labels: list[str]
    counts: list[int]  # per bucket of BUCKETS, not cumulative, then the +Inf overflow
    sum: float


class Snapshot(TypedDict):
    """A `Metrics` as plain lists, dicts, strings and numbers: picklable and JSON-able."""

    buckets: list[float]
    counters: dict[str, list[CounterSeries]]
    histograms: dict[str, list[HistogramSeries]]


# A histogram series: its bucket counts (BUCKETS, then +Inf), then the sum of observations.
Histogram = list[float]


class Metrics:
    """What the data plane counts. Every method is a dict update or two: no locks, no
    prometheus_client objects, and no memory kept beyond the first call for a set of labels."""

    __slots__ = (
        "bytes_total",
        "connect_duration",
        "connections_total",
        "dns_answers_total",
        "dns_queries_total",
        "dns_rate_limited_total",
        "health_checks_total",
        "hook_errors_total",
        "hook_seconds",
        "rejected_total",
        "request_duration",
        "requests_total",
        "retries_total",
    )

    def __init__(self) -> None:
        self.requests_total: dict[tuple[str, str, str, int], int] = {}
        self.retries_total: dict[tuple[str], int] = {}
        self.rejected_total: dict[tuple[str, str], int] = {}
        self.bytes_total: dict[tuple[str, str], int] = {}
        self.health_checks_total: dict[tuple[str, str, str], int] = {}
        self.connections_total: dict[tuple[str, str, str, str], int] = {}
        self.dns_queries_total: dict[tuple[str, str, str, str], int] = {}
        self.dns_answers_total: dict[tuple[str, str, str, str], int] = {}
        self.dns_rate_limited_total: dict[tuple[str, str], int] = {}
        self.request_duration: dict[tuple[str, str], Histogram] = {}
        self.connect_duration: dict[tuple[str, str], Histogram] = {}
        self.hook_errors_total: dict[tuple[str, str], int] = {}
        self.hook_seconds: dict[tuple[str, str], Histogram] = {}

    # The hot path

    def request(
        self, listener: str, pool: str | None, backend: str | None, code: int, seconds: float
    ) -> None:
        """One finished request (pool and backend None when it never reached one)."""
        pool = pool or ""
        key = (listener, pool, backend or "", code)
        counts = self.requests_total
        counts[key] = counts.get(key, 0) + 1
        durations = self.request_duration
        hkey = (listener, pool)
        histogram = durations.get(hkey)
        if histogram is None:
            histogram = durations[hkey] = [0] * (_SLOTS + 1)
        histogram[bisect_left(BUCKETS, seconds)] += 1
        histogram[_SLOTS] += seconds

    def connect(self, pool: str, backend: str, seconds: float) -> None:
        """A new connection to a backend was opened in `seconds`."""
        _observe(self.connect_duration, (pool, backend), seconds)

    def hook(self, hook: str, phase: str, seconds: float) -> None:
        """A hook's phase took `seconds` (usher.hooks)."""
        _observe(self.hook_seconds, (hook, phase), seconds)

    def hook_error(self, hook: str, phase: str) -> None:
        counts = self.hook_errors_total
        key = (hook, phase)
        counts[key] = counts.get(key, 0) + 1

    def retry(self, pool: str) -> None:
        counts = self.retries_total
        key = (pool,)
        counts[key] = counts.get(key, 0) + 1

    def rejected(self, listener: str, reason: str) -> None:
        """usher refused a request itself: bad_request, too_large, timeout, no_route, ..."""
        counts = self.rejected_total
        key = (listener, reason)
        counts[key] = counts.get(key, 0) + 1

    def bytes(self, listener: str, direction: str, n: int) -> None:
        """`n` bytes from the client (direction "in") or to it ("out")."""
        counts = self.bytes_total
        key = (listener, direction)
        counts[key] = counts.get(key, 0) + n

    def connection(self, listener: str, pool: str | None, backend: str | None, result: str) -> None:
        """One finished layer-4 connection or UDP session: ok, connect_failed, no_backend, ..."""
        counts = self.connections_total
        key = (listener, pool or "", backend or "", result)
        counts[key] = counts.get(key, 0) + 1

    def dns_query(
        self,
        listener: str,
        record: str,
        policy: str,
        rcode: str,
        answers: Iterable[tuple[str, str]],
    ) -> None:
        """One DNS query answered, and the (pool, backend) of each address in the answer."""
        key = (listener, record, policy, rcode)
        self.dns_queries_total[key] = self.dns_queries_total.get(key, 0) + 1
        counts = self.dns_answers_total
        for pool, backend in answers:
            akey = (listener, record, pool, backend)
            counts[akey] = counts.get(akey, 0) + 1

    def dns_rate_limited(self, listener: str, action: str) -> None:
        counts = self.dns_rate_limited_total
        key = (listener, action)
        counts[key] = counts.get(key, 0) + 1

    def health_check(self, pool: str, backend: str, ok: bool) -> None:
        counts = self.health_checks_total
        key = (pool, backend, "pass" if ok else "fail")
        counts[key] = counts.get(key, 0) + 1

    # Snapshots (several workers)

    def snapshot(self) -> Snapshot:
        """Everything counted so far, series sorted by labels."""
        return {
            "buckets": list(BUCKETS),
            "counters": {
                name: [
                    {"labels": [str(v) for v in key], "value": value}
                    for key, value in _sorted(getattr(self, attr))
                ]
                for name, attr, _, _ in COUNTERS
            },
            "histograms": {
                name: [
                    {
                        "labels": list(key),
                        "counts": [int(c) for c in histogram[:_SLOTS]],
                        "sum": float(histogram[_SLOTS]),
                    }
                    for key, histogram in _sorted(getattr(self, attr))
                ]
                for name, attr, _, _ in HISTOGRAMS
            },
        }

    def add_snapshot(self, snapshot: Snapshot) -> None:
        """Add the counts of `snapshot` to these."""
        if [float(b) for b in snapshot["buckets"]] != list(BUCKETS):
            raise ValueError(f"histogram buckets differ: {snapshot['buckets']} != {list(BUCKETS)}")
        counters = snapshot["counters"]
        for name, attr, labelnames, _ in COUNTERS:
            target: dict[tuple[Any, ...], int] = getattr(self, attr)
            for series in counters.get(name, ()):
                key = _key(name, series["labels"], labelnames)
                target[key] = target.get(key, 0) + series["value"]
        histograms = snapshot["histograms"]
        for name, attr, labelnames, _ in HISTOGRAMS:
            hists: dict[tuple[Any, ...], Histogram] = getattr(self, attr)
            for hseries in histograms.get(name, ()):
                key = _key(name, hseries["labels"], labelnames)
                counts = hseries["counts"]
                if len(counts) != _SLOTS:
                    raise ValueError(f"{name}: {len(counts)} bucket counts, expected {_SLOTS}")
                histogram = hists.get(key)
                if histogram is None:
                    histogram = hists[key] = [0] * (_SLOTS + 1)
                for i, count in enumerate(counts):
                    histogram[i] += count
                histogram[_SLOTS] += hseries["sum"]

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot) -> Metrics:
        metrics = cls()
        metrics.add_snapshot(snapshot)
        return metrics


def _observe(
    histograms: dict[tuple[str, str], Histogram], key: tuple[str, str], seconds: float
) -> None:
    """Add one observation to the histogram series `key`."""
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = [0] * (_SLOTS + 1)
    histogram[bisect_left(BUCKETS, seconds)] += 1
    histogram[_SLOTS] += seconds


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """The sum of several snapshots (one per worker), in the same format."""
    total = Metrics()
    for snapshot in snapshots:
        total.add_snapshot(snapshot)
    return total.snapshot()


def _sorted(series: Mapping[tuple[Any, ...], Any]) -> list[tuple[tuple[Any, ...], Any]]:
    # A copy first: a scrape served from another thread must not see the dict change size.
    return sorted(dict(series).items())


def _key(name: str, labels: list[str], labelnames: tuple[str, ...]) -> tuple[Any, ...]:
    if len(labels) != len(labelnames):
        raise ValueError(f"{name}: labels {labels} do not match {list(labelnames)}")
    if name == "usher_requests_total":
        return (*labels[:3], int(labels[3]))  # the status code is counted as an int
    return tuple(labels)


class UsherCollector(Collector):
    """Turns a `Metrics` and the live pools into metric families, at scrape time.

    `metrics` is a `Metrics`, or a callable returning one (the control process: the merge of
    its workers' snapshots). `pools` returns the current pools (they change on reload);
    `connections` the open client connections per listener name.
    """

    def __init__(
        self,
        metrics: Metrics | Callable[[], Metrics],
        pools: Callable[[], Mapping[str, Pool]],
        connections: Callable[[], Mapping[str, int]],
    ) -> None:
        self.metrics = metrics
        self.pools = pools
        self.connections = connections

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics if isinstance(self.metrics, Metrics) else self.metrics()
        for name, attr, labelnames, documentation in COUNTERS:
            counter = CounterMetricFamily(name, documentation, labels=labelnames)
            for key, value in _sorted(getattr(metrics, attr)):
                counter.add_metric([str(v) for v in key], value)
            yield counter
        for name, attr, labelnames, documentation in HISTOGRAMS:
            family = HistogramMetricFamily(name, documentation, labels=labelnames)
            for key, histogram in _sorted(getattr(metrics, attr)):
                buckets: list[tuple[str, float]] = []
                cumulative = 0
                for le, count in zip(_LE, histogram[:_SLOTS], strict=True):
                    cumulative += int(count)
                    buckets.append((le, cumulative))
                family.add_metric(list(key), buckets, histogram[_SLOTS])
            yield family
        yield from self._pool_gauges()
        connections = GaugeMetricFamily(
            "usher_active_connections", "Open client connections.", labels=("listener",)
        )
        for listener, count in sorted(dict(self.connections()).items()):
            connections.add_metric([listener], count)
        yield connections

    def _pool_gauges(self) -> Iterator[Metric]:
        active = GaugeMetricFamily(
            "usher_backend_active", "Requests in flight to a backend.", labels=("pool", "backend")
        )
        healthy = GaugeMetricFamily(
            "usher_backend_healthy",
            "1 when the backend takes traffic (state healthy), else 0.",
            labels=("pool", "backend"),
        )
        state = GaugeMetricFamily(
            "usher_backend_state",
            "1 for the backend's current state, 0 for the others.",
            labels=("pool", "backend", "state"),
        )
        for name, pool in sorted(dict(self.pools()).items()):
            now = pool.clock.now()
            for backend in list(pool.backends):
                label = backend.label
                status = backend.status(now)
                active.add_metric([name, label], backend.active)
                healthy.add_metric([name, label], 1 if status == "healthy" else 0)
                for candidate in BACKEND_STATES:
                    state.add_metric([name, label, candidate], 1 if status == candidate else 0)
        yield active
        yield healthy
        yield state


class CallbackCollector(Collector):
    """Families a callable yields at scrape time (`usher_cluster_up`, usher.state.redis)."""

    def __init__(self, families: Callable[[], Iterator[Metric]]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return self.families()


def build_registry(
    metrics: Metrics | Callable[[], Metrics],
    pools: Callable[[], Mapping[str, Pool]],
    connections: Callable[[], Mapping[str, int]],
) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one) holding one UsherCollector,
    so that several balancers in one process, and tests, do not clash."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(UsherCollector(metrics, pools, connections))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The body and Content-Type of a `/metrics` answer (text format 0.0.4: every name here
    is a classic one, and it is what prometheus_client serves a scraper that asks nothing)."""
    return generate_latest(registry), CONTENT_TYPE_PLAIN_0_0_4
