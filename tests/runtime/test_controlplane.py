"""The control plane: operator changes and reloads over its data plane, alone (one process)
or in front of a fleet of workers (their counts are read before a change depends on them)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import yaml

from tests.conftest import pool_of, simple_config
from usher.config import parse_config
from usher.metrics import Metrics
from usher.runtime.controlplane import ControlPlane
from usher.surface import ReloadReport


async def test_a_dropped_backend_drains_then_leaves_pool_and_checks(backends, balancer) -> None:
    one, two = await backends(2)
    checked = pool_of(one, two, health_check={"type": "tcp", "interval": "1s"})
    lb = await balancer(simple_config({"web": checked}))
    control = lb.balancer
    assert isinstance(control, ControlPlane)
    report = await control.reload(
        parse_config(yaml.safe_dump(simple_config({"web": pool_of(one)})))
    )
    assert report.backends_draining == [f"web/127.0.0.1:{two.port}"]
    for _ in range(100):  # nothing in flight: it goes at once
        if len(control.pools["web"].backends) == 1:
            break
        await asyncio.sleep(0.01)
    assert [b.label for b in control.pools["web"].backends] == [f"127.0.0.1:{one.port}"]
    assert control.checkers["web"].pool is control.pools["web"]


class Workers:
    """Workers as a control plane sees them: a count of requests in flight per backend that
    only `sync_counts` brings into the control plane's pools (as the shared table does)."""

    def __init__(self, control: ControlPlane | None = None) -> None:
        self.control = control
        self.in_flight: dict[str, int] = {}
        self.calls: list[str] = []
        self.metrics = Metrics()

    def sync_counts(self) -> None:
        self.calls.append("sync")
        assert self.control is not None
        for pool in self.control.pools.values():
            for backend in pool.backends:
                backend.active = self.in_flight.get(backend.label, 0)
                if backend.drained is not None and backend.active == 0:
                    backend.drained.set()

    async def before_scrape(self) -> None:
        self.calls.append("scrape")

    def merged_metrics(self) -> Metrics:
        return self.metrics

    def connections(self) -> dict[str, int]:
        return {"web": 5}

    def describe(self, view: dict[str, Any]) -> None:
        view["workers"] = [{"number": 0, "pid": 1}]

    async def reloaded(self, report: ReloadReport) -> None:
        self.calls.append("reloaded")
        report.notes.append("worker 0: told")

    def listening_fds(self) -> list[int]:
        return [99]

    async def stop(self, timeout: float) -> None:
        self.calls.append(f"stop {timeout:g}")

    def close(self) -> None:
        self.calls.append("close")


def fleet_control(config: dict[str, Any]) -> tuple[ControlPlane, Workers]:
    workers = Workers()
    control = ControlPlane(parse_config(yaml.safe_dump(config)), workers=2, fleet=workers)
    workers.control = control
    return control, workers


async def test_a_removal_reads_the_workers_counts_before_it_drains() -> None:
    control, workers = fleet_control(simple_config({"web": pool_of("127.0.0.1:9001")}))
    (backend,) = control.pools["web"].backends
    backend.active = 3  # what the control plane saw last; the workers have finished since
    clean = await asyncio.wait_for(control.remove_backend("web", "127.0.0.1:9001"), 2.0)
    assert clean
    assert control.pools["web"].backends == []
    assert workers.calls == ["sync"]


async def test_with_workers_a_draining_backend_waits_for_theirs() -> None:
    control, workers = fleet_control(simple_config({"web": pool_of("127.0.0.1:9001")}))
    workers.in_flight["127.0.0.1:9001"] = 1
    clean = await control.remove_backend("web", "127.0.0.1:9001", timeout=0.05)
    assert not clean  # timed out with the workers' request in flight, removed all the same
    assert control.pools["web"].backends == []


async def test_the_view_counts_the_workers_connections_and_lists_them() -> None:
    control, workers = fleet_control(simple_config({"web": pool_of("127.0.0.1:9001")}))
    view = control.describe()
    assert view["listeners"][0]["connections"] == 5
    assert view["workers"] == [{"number": 0, "pid": 1}]
    assert workers.calls == ["sync"]
    assert control.listening_fds() == [99]  # the workers' sockets, not the reservations


async def test_a_reload_reaches_the_workers_after_this_process() -> None:
    control, workers = fleet_control(simple_config({"web": pool_of("127.0.0.1:9001")}))
    await control.start()
    try:
        new = parse_config(yaml.safe_dump(simple_config({"web": pool_of("127.0.0.1:9002")})))
        report = await control.reload(new)
        assert workers.calls[0] == "sync"  # the counts first, the workers last
        assert workers.calls[-1] == "reloaded"
        assert report.notes == ["worker 0: told"]
        assert report.backends_added == ["web/127.0.0.1:9002"]
    finally:
        await control.stop(timeout=5)
    # the workers drain with the whole timeout; nothing is in flight in this process
    assert workers.calls[-2:] == ["stop 5", "close"]


def test_the_admin_api_is_loaded_only_for_a_config_that_has_one() -> None:
    probe = (
        "import sys, usher.server, usher.runtime.controlplane; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'usher.admin.api') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"  # `usher check` and a start without `admin:` skip them
