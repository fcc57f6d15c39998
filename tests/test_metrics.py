"""Metrics: what the data plane counts, the exposition a scrape sees (names are a contract,
design §5), live backend gauges, merging the snapshots of several workers."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import tracemalloc

import pytest
from prometheus_client import REGISTRY

from usher.clock import ManualClock
from usher.config import PoolConfig
from usher.metrics import BUCKETS, Metrics, build_registry, merge, render
from usher.pool import Pool

A, B, C = "127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"

CONTRACT_NAMES = [
    "usher_requests_total",
    "usher_request_duration_seconds",
    "usher_upstream_connect_duration_seconds",
    "usher_active_connections",
    "usher_backend_active",
    "usher_backend_healthy",
    "usher_backend_state",
    "usher_health_checks_total",
    "usher_retries_total",
    "usher_rejected_total",
    "usher_bytes_total",
    "usher_connections_total",
    "usher_dns_queries_total",
    "usher_dns_answers_total",
    "usher_dns_rate_limited_total",
    "usher_hook_seconds",
    "usher_hook_errors_total",
]


def make_pool(name: str = "web", clock: ManualClock | None = None) -> Pool:
    config = PoolConfig.model_validate(
        {
            "backends": [{"address": A}, {"address": B}, {"address": C}],
            "passive_health": {"max_fails": 1, "fail_timeout": "10s"},
        }
    )
    return Pool(name, config, clock or ManualClock(1000.0))


def scrape(metrics: Metrics, pools: dict[str, Pool], connections: dict[str, int]) -> list[str]:
    body, _ = render(build_registry(metrics, lambda: pools, lambda: connections))
    return body.decode().splitlines()


def record_traffic(metrics: Metrics) -> None:
    """A little of everything. Durations are binary fractions, so sums are exact."""
    metrics.request("web", "web", A, 200, 0.0078125)  # le 0.01
    metrics.request("web", "web", A, 200, 0.25)  # on a bound: le is inclusive
    metrics.request("web", "web", B, 502, 1.5)  # le 2.5
    metrics.request("web", "web", B, 200, 16.0)  # only +Inf
    metrics.request("web", None, None, 404, 0.0009765625)  # routed nowhere
    metrics.connect("web", A, 0.001953125)
    metrics.connect("web", A, 0.0625)
    metrics.retry("web")
    metrics.retry("web")
    metrics.rejected("web", "too_large")
    metrics.rejected("web", "bad_request")
    metrics.rejected("web", "bad_request")
    metrics.bytes("web", "in", 1200)
    metrics.bytes("web", "in", 34)
    metrics.bytes("web", "out", 5000)
    metrics.health_check("web", A, True)
    metrics.health_check("web", A, True)
    metrics.health_check("web", C, False)


def histogram_lines(name: str, labels: str, cumulative: list[int], total: float) -> list[str]:
    """Every sample line of one histogram series; `labels` are the others, sorted, before le."""
    les = [repr(b) for b in BUCKETS] + ["+Inf"]
    assert len(cumulative) == len(les)

    def with_le(le: str) -> str:
        # prometheus_client sorts label names: `le` goes where it belongs alphabetically.
        parts = sorted([*labels.split(","), f'le="{le}"'], key=lambda p: p.split("=")[0])
        return ",".join(parts)

    lines = [
        f"{name}_bucket{{{with_le(le)}}} {float(n)}" for le, n in zip(les, cumulative, strict=True)
    ]
    lines.append(f"{name}_count{{{labels}}} {float(cumulative[-1])}")
    lines.append(f"{name}_sum{{{labels}}} {total!r}")
    return lines


def test_counters_expose_exact_samples() -> None:
    metrics = Metrics()
    record_traffic(metrics)
    lines = scrape(metrics, {"web": make_pool()}, {"web": 3})
    expected = [
        "# HELP usher_requests_total Finished requests, by the status code sent to the client.",
        "# TYPE usher_requests_total counter",
        'usher_requests_total{backend="",code="404",listener="web",pool=""} 1.0',
        f'usher_requests_total{{backend="{A}",code="200",listener="web",pool="web"}} 2.0',
        f'usher_requests_total{{backend="{B}",code="200",listener="web",pool="web"}} 1.0',
        f'usher_requests_total{{backend="{B}",code="502",listener="web",pool="web"}} 1.0',
        "# TYPE usher_retries_total counter",
        'usher_retries_total{pool="web"} 2.0',
        "# TYPE usher_rejected_total counter",
        'usher_rejected_total{listener="web",reason="bad_request"} 2.0',
        'usher_rejected_total{listener="web",reason="too_large"} 1.0',
        "# TYPE usher_bytes_total counter",
        'usher_bytes_total{direction="in",listener="web"} 1234.0',
        'usher_bytes_total{direction="out",listener="web"} 5000.0',
        "# TYPE usher_health_checks_total counter",
        f'usher_health_checks_total{{backend="{A}",pool="web",result="pass"}} 2.0',
        f'usher_health_checks_total{{backend="{C}",pool="web",result="fail"}} 1.0',
        "# TYPE usher_active_connections gauge",
        'usher_active_connections{listener="web"} 3.0',
    ]
    missing = [line for line in expected if line not in lines]
    assert not missing, "\n".join(lines)
    # Sorted by labels, whatever the order of recording.
    requests = [line for line in lines if line.startswith("usher_requests_total{")]
    assert requests == [line for line in expected if line.startswith("usher_requests_total{")]


def test_histograms_expose_buckets_sum_and_count() -> None:
    metrics = Metrics()
    record_traffic(metrics)
    lines = scrape(metrics, {}, {})
    assert "# TYPE usher_request_duration_seconds histogram" in lines
    assert "# TYPE usher_upstream_connect_duration_seconds histogram" in lines
    # le:                        .005 .01 .025 .05 .1 .25 .5  1  2.5  5  10 +Inf
    web = histogram_lines(
        "usher_request_duration_seconds",
        'listener="web",pool="web"',
        [0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4],
        0.0078125 + 0.25 + 1.5 + 16.0,
    )
    nowhere = histogram_lines(
        "usher_request_duration_seconds",
        'listener="web",pool=""',
        [1] * 12,
        0.0009765625,
    )
    connect = histogram_lines(
        "usher_upstream_connect_duration_seconds",
        f'backend="{A}",pool="web"',
        [1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2],
        0.064453125,
    )
    for series in (web, nowhere, connect):
        start = lines.index(series[0])
        assert lines[start : start + len(series)] == series, "\n".join(lines)


def test_bucket_bounds_are_inclusive() -> None:
    metrics = Metrics()
    for bound in BUCKETS:
        metrics.connect("p", "b", bound)
    metrics.connect("p", "b", 10.5)
    counts = metrics.snapshot()["histograms"]["usher_upstream_connect_duration_seconds"][0]
    assert counts["counts"] == [1] * (len(BUCKETS) + 1)


def test_every_contract_name_is_exposed_before_any_traffic() -> None:
    lines = scrape(Metrics(), {}, {})
    types = {line.split()[2] for line in lines if line.startswith("# TYPE ")}
    assert types == set(CONTRACT_NAMES)


def state_lines(lines: list[str], backend: str) -> dict[str, float]:
    """The gauges of one backend: active, healthy and state=<each>."""
    out: dict[str, float] = {}
    for line in lines:
        if f'backend="{backend}"' not in line or not line.startswith("usher_backend_"):
            continue
        sample, value = line.rsplit(" ", 1)
        name = sample.split("{")[0].removeprefix("usher_backend_")
        if name == "state":
            name = "state=" + sample.split('state="')[1].split('"')[0]
        out[name] = float(value)
    return out


def expect_state(lines: list[str], backend: str, state: str, *, active: int = 0) -> None:
    gauges = state_lines(lines, backend)
    assert gauges == {
        "active": active,
        "healthy": 1.0 if state == "healthy" else 0.0,
        **{
            f"state={s}": 1.0 if s == state else 0.0
            for s in ("healthy", "unhealthy", "draining", "disabled")
        },
    }, "\n".join(lines)


def test_backend_gauges_follow_live_state() -> None:
    clock = ManualClock(1000.0)
    pool = make_pool(clock=clock)
    a, b, c = pool.backends
    pools = {"web": pool}
    metrics = Metrics()
    lines = scrape(metrics, pools, {})
    for label in (A, B, C):
        expect_state(lines, label, "healthy")
    assert f'usher_backend_state{{backend="{A}",pool="web",state="healthy"}} 1.0' in lines, (
        "\n".join(lines)
    )

    # The same registry, scraped again: nothing is cached between scrapes.
    registry = build_registry(metrics, lambda: pools, lambda: {})
    pool.on_start(a)
    pool.on_start(a)
    pool.set_state(b, "draining")
    pool.set_healthy(c, False, "3 failed checks")
    lines = render(registry)[0].decode().splitlines()
    expect_state(lines, A, "healthy", active=2)
    expect_state(lines, B, "draining")
    expect_state(lines, C, "unhealthy")

    pool.set_state(b, "disabled")
    pool.set_healthy(c, True, "2 passed checks")
    pool.on_finish(a, 0.01, False, "connection reset")  # max_fails 1: ejected for 10s
    lines = render(registry)[0].decode().splitlines()
    expect_state(lines, A, "unhealthy", active=1)
    expect_state(lines, B, "disabled")
    expect_state(lines, C, "healthy")

    clock.advance(10.0)  # the ejection is over: read from the pool's clock at scrape time
    lines = render(registry)[0].decode().splitlines()
    expect_state(lines, A, "healthy", active=1)


def test_pools_are_read_at_each_scrape() -> None:
    """A reload replaces pools and backends: the gauges show the current ones only."""
    pools = {"web": make_pool()}
    connections = {"web": 1}
    registry = build_registry(Metrics(), lambda: pools, lambda: connections)
    pools["api"] = make_pool("api")
    pools["web"].remove_backend(pools["web"].backends[2])
    connections["admin"] = 4
    lines = render(registry)[0].decode().splitlines()
    active = [line for line in lines if line.startswith("usher_backend_active{")]
    assert active == [
        f'usher_backend_active{{backend="{A}",pool="api"}} 0.0',
        f'usher_backend_active{{backend="{B}",pool="api"}} 0.0',
        f'usher_backend_active{{backend="{C}",pool="api"}} 0.0',
        f'usher_backend_active{{backend="{A}",pool="web"}} 0.0',
        f'usher_backend_active{{backend="{B}",pool="web"}} 0.0',
    ]
    assert [line for line in lines if line.startswith("usher_active_connections{")] == [
        'usher_active_connections{listener="admin"} 4.0',
        'usher_active_connections{listener="web"} 1.0',
    ]


def test_render_returns_text_format_and_its_content_type() -> None:
    body, content_type = render(build_registry(Metrics(), dict, dict))
    assert isinstance(body, bytes)
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"


def test_registries_are_private() -> None:
    one, two = Metrics(), Metrics()
    one.retry("web")
    r1 = build_registry(one, dict, dict)
    r2 = build_registry(two, dict, dict)
    assert 'usher_retries_total{pool="web"} 1.0' in render(r1)[0].decode()
    assert "usher_retries_total{" not in render(r2)[0].decode()
    assert REGISTRY.get_sample_value("usher_retries_total", {"pool": "web"}) is None


def test_output_passes_promtool() -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None, (
        "promtool is needed to check the metrics exposition: apt-get install prometheus"
    )
    metrics = Metrics()
    record_traffic(metrics)
    pool = make_pool()
    pool.set_state(pool.backends[1], "draining")
    body, _ = render(build_registry(metrics, lambda: {"web": pool}, lambda: {"web": 2}))
    result = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, timeout=30, check=False
    )
    report = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, report
    assert report.strip() == "", report  # no lint warnings either


# Several workers


def split_traffic() -> tuple[Metrics, Metrics, Metrics]:
    """The same traffic recorded by one process, and split over two workers."""
    single, one, two = Metrics(), Metrics(), Metrics()
    record_traffic(single)
    record_traffic(one)
    record_traffic(single)
    single.request("api", "api", C, 503, 0.125)
    two.request("api", "api", C, 503, 0.125)
    record_traffic(two)
    return single, one, two


def test_merging_worker_snapshots_equals_recording_in_one() -> None:
    single, one, two = split_traffic()
    merged = merge([one.snapshot(), two.snapshot()])
    assert merged == single.snapshot()
    empty = Metrics()
    pools = {"web": make_pool()}
    assert scrape(Metrics.from_snapshot(merged), pools, {}) == scrape(single, pools, {})
    assert merge([]) == empty.snapshot()
    assert merge([single.snapshot()]) == single.snapshot()


def test_snapshots_survive_json_and_pickle() -> None:
    single, one, two = split_traffic()
    over_json = [json.loads(json.dumps(m.snapshot())) for m in (one, two)]
    over_pickle = [pickle.loads(pickle.dumps(m.snapshot())) for m in (one, two)]
    assert merge(over_json) == merge(over_pickle) == single.snapshot()
    # The status code label comes back as the int it was counted as.
    again = Metrics.from_snapshot(over_json[0])
    assert again.requests_total == one.requests_total


def test_collector_can_serve_a_merge_computed_at_scrape() -> None:
    workers = [Metrics(), Metrics()]
    registry = build_registry(
        lambda: Metrics.from_snapshot(merge(w.snapshot() for w in workers)), dict, dict
    )
    workers[0].retry("web")
    workers[1].retry("web")
    assert 'usher_retries_total{pool="web"} 2.0' in render(registry)[0].decode()
    workers[1].retry("web")
    assert 'usher_retries_total{pool="web"} 3.0' in render(registry)[0].decode()


def test_snapshots_with_other_buckets_are_refused() -> None:
    snapshot = Metrics().snapshot()
    snapshot["buckets"] = [0.1, 1.0]
    with pytest.raises(ValueError, match="buckets differ"):
        merge([snapshot])
    bad = Metrics()
    bad.connect("p", "b", 0.1)
    snapshot = bad.snapshot()
    snapshot["histograms"]["usher_upstream_connect_duration_seconds"][0]["counts"].pop()
    with pytest.raises(ValueError, match="bucket counts"):
        Metrics.from_snapshot(snapshot)


# The hot path


def test_recording_keeps_no_memory_after_the_first_call_per_labels() -> None:
    metrics = Metrics()
    assert not hasattr(metrics, "__dict__")
    durations = [0.003, 0.04, 0.7, 12.0]

    def burst(n: int) -> None:
        for i in range(n):
            seconds = durations[i & 3]
            metrics.request("web", "web", A, 200, seconds)
            metrics.request("web", None, None, 404, seconds)
            metrics.connect("web", A, seconds)
            metrics.retry("web")
            metrics.rejected("web", "timeout")
            metrics.bytes("web", "out", 512)
            metrics.health_check("web", A, True)

    burst(1)  # the first call per labels makes the dict entries
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        burst(10_000)
        after, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2048, f"{after - before} bytes kept by 70,000 calls"
    assert peak - before < 4096, f"{peak - before} bytes at the peak"
    assert metrics.requests_total[("web", "web", A, 200)] == 10_001
