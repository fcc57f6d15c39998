"""The control plane: what the admin API, SIGHUP and discovery act on (`ControlSurface`).

It holds a data plane (usher.runtime.dataplane): in one process, the one that serves; in the
control process of several workers, one whose listeners only hold their addresses, with a
`Fleet` (usher.process.supervisor's supervisor) that runs the workers, sums their counts and passes
reloads on. Around it: the health checkers, the pools' discovery sources, the admin API,
operator changes (usher.runtime.changes) and reloads (usher.runtime.reload). A reload validates
the whole new config first and changes nothing when it is bad; when it is good, listeners that
did not change keep their sockets, pools keep the live state of the backends that remain, and
removed backends drain before they go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import CollectorRegistry

from usher.admin.views import describe_pool
from usher.clock import Clock
from usher.config import DEFAULT_DRAIN_TIMEOUT, Config, load_config
from usher.discovery import DiscoveryRunner
from usher.dns.server import DnsListener
from usher.errors import BindError, ChangeError
from usher.health import HealthChecker
from usher.listeners import AnyListener
from usher.logs import AccessLog
from usher.metrics import CallbackCollector, Metrics, build_registry
from usher.pool import ADMIN_SOURCE, Backend, Pool
from usher.runtime import changes, reload
from usher.runtime.dataplane import Bound, DataPlane, OpenSockets, import_user_code
from usher.surface import ReloadReport

if TYPE_CHECKING:
    from usher.admin.serve import AdminServer


class Fleet(Protocol):
    """The worker processes behind a control plane that serves no traffic itself."""

    def sync_counts(self) -> None:
        """Read the workers' requests in flight and totals into the control plane's backends."""

    async def before_scrape(self) -> None:
        """Collect the workers' counters for `merged_metrics`."""

    def merged_metrics(self) -> Metrics: ...

    def connections(self) -> dict[str, int]:
        """Open client connections per listener, summed over the workers."""

    def describe(self, view: dict[str, Any]) -> None:
        """Add to the control plane's view what only the workers know."""

    async def reloaded(self, report: ReloadReport) -> None:
        """Have every worker apply the config the control plane has just reloaded; a worker's
        failure goes into the report's notes."""

    def listening_fds(self) -> list[int]:
        """The workers' listening sockets (an upgrade hands them over)."""

    async def stop(self, timeout: float) -> None:
        """Every worker drains (up to `timeout`) and exits."""

    def close(self) -> None:
        """Let go of what the workers shared, once they are gone."""


class ControlPlane:
    """Everything one config describes, as the operator sees it; it implements
    usher.surface.ControlSurface."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        access_log: AccessLog | None = None,
        seed: int = 0,
        reuse_port: bool = False,
        config_path: str | Path | None = None,
        workers: int = 1,
        open_sockets: OpenSockets | None = None,
        fleet: Fleet | None = None,
    ) -> None:
        self.dataplane = DataPlane(
            config,
            clock=clock,
            access_log=access_log,
            seed=seed,
            reuse_port=reuse_port,
            workers=workers,
            open_sockets=open_sockets,
        )
        self.fleet = fleet
        self.config_path = Path(config_path) if config_path is not None else None
        # Active checks and agent polls, one task per backend; idle for pools without them.
        self.checkers = {name: self._checker(pool) for name, pool in self.pools.items()}
        self.registry: CollectorRegistry = build_registry(
            fleet.merged_metrics if fleet is not None else self.metrics,
            lambda: self.pools,  # read through lambdas: a reload replaces the pools
            fleet.connections if fleet is not None else self.dataplane.connections,
        )
        if self.dataplane.cluster is not None:
            self.registry.register(CallbackCollector(self.dataplane.cluster.collect))
        self.runtime_changes: list[tuple[str, str, str]] = []  # (pool, address, what)
        self.discovery = DiscoveryRunner(self)
        self.admin: AdminServer | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()

    # The data plane's parts, as the admin API and the tests read them

    @property
    def config(self) -> Config:
        return self.dataplane.config

    @property
    def clock(self) -> Clock:
        return self.dataplane.clock

    @property
    def metrics(self) -> Metrics:
        return self.dataplane.metrics

    @property
    def pools(self) -> dict[str, Pool]:
        return self.dataplane.pools

    @property
    def listeners(self) -> dict[str, AnyListener]:
        return self.dataplane.listeners

    @property
    def bound(self) -> dict[str, Bound]:
        return self.dataplane.bound

    @property
    def admin_url(self) -> str | None:
        return self.admin.url if self.admin is not None else None

    def _checker(self, pool: Pool) -> HealthChecker:
        name = pool.name
        metrics = self.metrics

        def counted(backend: Backend, ok: bool, detail: str, at: float) -> None:
            metrics.health_check(name, backend.label, ok)

        return HealthChecker(pool, self.clock, on_result=counted)

    # Lifecycle

    async def start(self) -> None:
        for checker in self.checkers.values():
            checker.start()
        self.discovery.update(self.config.pools)
        try:
            await self.dataplane.start()
            if self.config.admin is not None:
                # Imported here: FastAPI and uvicorn cost every start (and `usher check`) a
                # few hundred ms, and a config without `admin:` never needs them.
                from usher.admin.serve import AdminServer

                self.admin = AdminServer(self.config.admin, self)
                await self.admin.start()
        except BindError:
            await self.stop(timeout=0)
            raise

    def listening_fds(self) -> list[int]:
        """The descriptors an upgrade hands over: every listener's sockets and the admin's."""
        served = self.fleet.listening_fds() if self.fleet else self.dataplane.listening_fds()
        return served + (self.admin.fds() if self.admin is not None else [])

    def stop_admin_accepting(self) -> None:
        """Another process serves the admin API from now on (an upgrade): accept no more."""
        if self.admin is not None:
            self.admin.stop_accepting()

    async def stop(self, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), then close all.
        With workers, they drain and exit first; nothing is in flight here."""
        if self.fleet is not None:
            await self.fleet.stop(timeout)
            timeout = 0
        await self.discovery.stop()
        await self.dataplane.stop(timeout)
        for checker in self.checkers.values():
            await checker.stop()
        for task in list(self._background):
            task.cancel()
        if self.admin is not None:
            await self.admin.stop()
        if self.fleet is not None:
            self.fleet.close()

    async def __aenter__(self) -> ControlPlane:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(timeout=1.0)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in the background; stop() cancels it."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Views

    def wall_offset(self) -> float:
        """What turns the balancer clock's readings into wall-clock times (for the API)."""
        return time.time() - self.clock.now()

    def describe(self) -> dict[str, Any]:
        self.sync_counts()
        offset = self.wall_offset()
        connections = self.fleet.connections() if self.fleet else self.dataplane.connections()
        view: dict[str, Any] = {
            "listeners": [
                {
                    "name": name,
                    "protocol": listener.config.protocol,
                    "bind": str(listener.config.bind),
                    "url": self.bound[name].url if name in self.bound else None,
                    "connections": connections.get(name, 0),
                }
                for name, listener in self.listeners.items()
            ],
            "pools": {name: describe_pool(pool, offset) for name, pool in self.pools.items()},
        }
        if self.fleet is not None:
            self.fleet.describe(view)
        return view

    def describe_dns(self) -> list[dict[str, Any]]:
        """Every dns listener's records and the sites they point at (`GET /api/dns`)."""
        return [
            {**listener.describe(), "url": self.bound[name].url if name in self.bound else None}
            for name, listener in self.listeners.items()
            if isinstance(listener, DnsListener)
        ]

    def sync_counts(self) -> None:
        """Bring the backends' requests in flight up to date before a change that depends on
        them, so that a drain that starts now sees the requests in flight now (with workers,
        they count in the shared table; one process counts in place)."""
        if self.fleet is not None:
            self.fleet.sync_counts()

    async def before_scrape(self) -> None:
        """Bring the metrics up to date before `/metrics` renders them (with workers, collect
        theirs; one process counts in place)."""
        if self.fleet is not None:
            await self.fleet.before_scrape()

    def pool(self, name: str) -> Pool:
        return changes.find_pool(self.pools, name)

    def backend(self, pool_name: str, address: str) -> tuple[Pool, Backend]:
        return changes.find_backend(self.pools, pool_name, address)

    # Operator changes (the admin API)

    def add_backend(
        self,
        pool_name: str,
        address: str,
        *,
        weight: int = 1,
        backup: bool = False,
        max_connections: int | None = None,
    ) -> Backend:
        pool = self.pool(pool_name)
        config = changes.new_backend(
            pool, address, weight=weight, backup=backup, max_connections=max_connections
        )
        backend = pool.add_backend(config, ADMIN_SOURCE)
        self.checkers[pool_name].add_backend(backend)
        self.runtime_changes.append((pool_name, backend.label, "added"))
        return backend

    def update_backend(
        self, pool_name: str, address: str, *, weight: int | None = None, state: str | None = None
    ) -> Backend:
        self.sync_counts()
        pool, backend = self.backend(pool_name, address)
        if weight is not None:
            pool.set_weight(backend, changes.checked_weight(weight))
            self.runtime_changes.append((pool_name, backend.label, f"weight {weight}"))
        if state is not None:
            target = changes.checked_state(state)
            if target == "draining":
                pool.set_state(backend, "draining", "draining")  # visible in this very answer
                self.spawn(pool.drain(backend))
            else:
                pool.set_state(backend, target)
        return backend

    async def remove_backend(
        self, pool_name: str, address: str, *, timeout: float | None = None
    ) -> bool:
        """Drain the backend, then remove it; returns whether it drained before the timeout."""
        self.sync_counts()
        pool, backend = self.backend(pool_name, address)
        change = (pool_name, backend.label, "removed")
        self.runtime_changes.append(change)
        clean = await pool.drain(backend, timeout=timeout, remove=True)
        if backend in pool.backends:
            self.runtime_changes.remove(change)
            raise changes.removal_called_off(pool, backend)
        self.checkers[pool_name].remove_backend(backend)
        return clean

    # Reload

    async def reload(self, config: Config | None = None) -> ReloadReport:
        """Apply a new config (default: re-read the file). Raises ConfigError when it is
        invalid and BindError when a new listener cannot bind: either way nothing changes.
        Reloads run one at a time, whether from SIGHUP or the admin API; with workers, each
        applies it after this process."""
        async with self._reload_lock:
            self.sync_counts()
            report = await self._reload(config)
            if self.fleet is not None:
                await self.fleet.reloaded(report)
            return report

    async def _reload(self, config: Config | None) -> ReloadReport:
        if config is None:
            if self.config_path is None:
                raise ChangeError(400, "this balancer was not started from a config file")
            config = load_config(self.config_path)
        else:
            import_user_code(config, fresh=True)  # validated elsewhere: re-import the user's
        applied = await reload.reload_to(self.dataplane, config)
        for name, backend in applied.dropped:
            self.spawn(self._drain_out(name, backend))
        if self.fleet is None:  # with workers, each retires its own copy of the pool
            for pool in applied.retired:
                self.spawn(self.dataplane.retire(pool))
        self.discovery.update(self.config.pools)  # kept sources go on; new pools get theirs
        self.restart_checkers(applied.plan.checkers_restart)
        applied.report.overwritten = reload.overwritten(self.runtime_changes, self.config)
        self.runtime_changes.clear()
        return applied.report

    def restart_checkers(self, pools: Iterable[str]) -> None:
        """New checkers for the reloaded pools; each starts from its backends' current health."""
        for name in list(self.checkers):
            self.spawn(self.checkers.pop(name).stop())
        for name in pools:
            checker = self._checker(self.pools[name])
            self.checkers[name] = checker
            checker.start()

    async def _drain_out(self, pool_name: str, backend: Backend) -> None:
        """A backend a reload dropped: it drains, then goes (with workers, the control plane
        sees the sum of their requests in flight)."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return
        await pool.drain(backend, remove=True)
        checker = self.checkers.get(pool_name)
        if checker is not None:
            checker.remove_backend(backend)
