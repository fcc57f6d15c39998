"""The running balancer: pools, routers and listeners built from a config; serve, change, drain.

Runtime changes (the admin API) and reloads go through here. A reload validates the whole new
config first and changes nothing when it is bad; when it is good, listeners that did not change
keep their sockets (and take new routes, limits and certificates), pools keep the live state of
the backends that remain, and removed backends drain before they go.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from usher import handover
from usher.admin.views import describe_pool
from usher.balancing import custom as custom_algorithms
from usher.clock import Clock, MonotonicClock
from usher.config import BackendConfig, Config, Listener, PoolConfig, load_config
from usher.discovery import DiscoveryRunner
from usher.dns.server import DnsListener
from usher.errors import BindError as BindError  # re-exported: its first home
from usher.errors import ChangeError, ConfigError, ConfigIssue
from usher.health import HealthChecker
from usher.http.hook_phases import build_hooks
from usher.listeners import Abortable, AnyListener, Serving, bind_listener, build_listener
from usher.logs import AccessLog
from usher.metrics import CallbackCollector, Metrics, build_registry
from usher.pool import ADMIN_SOURCE, Backend, Pool, State
from usher.routing import Router
from usher.runtime import reload
from usher.state import install_cluster
from usher.state.redis import ClusterLink
from usher.surface import ReloadReport as ReloadReport  # re-exported: its first home
from usher.tls import ServerTls, load_upstream_contexts

if TYPE_CHECKING:
    import uvicorn

# What opens a listener's sockets: by default they are served in this process; the control
# process of several workers only holds their addresses (usher.process.reserve).
OpenSockets = Callable[[AnyListener], Awaitable[Serving]]

# How long SIGTERM waits for in-flight requests before cutting them.
DEFAULT_DRAIN_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class Bound:
    """Where a listener actually listens (its port when the config said 0)."""

    name: str
    host: str
    port: int
    scheme: str

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class Balancer:
    """Everything one config describes. Building it checks what the model alone cannot
    (certificates load); nothing binds a socket until `start()`."""

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
        control_plane: bool = True,
    ) -> None:
        self.config = config
        # Whether this process runs the control plane: health checks, the pools' discovery
        # sources and the admin API (a worker follows the control process's through the sync).
        self.runs_control_plane = control_plane
        self._open_sockets = open_sockets or self._serve_sockets
        self.worker_count = workers  # each enforces its share of the rate and connection limits
        self.config_path = Path(config_path) if config_path is not None else None
        self.clock = clock or MonotonicClock()
        self.access_log = access_log or AccessLog(enabled=False)
        self.seed = seed
        self.reuse_port = reuse_port
        _import_user_code(config, fresh=False)
        self.hooks = build_hooks(config)  # the user's hooks (usher.hooks), built once per load
        # With `cluster:`, what it shares lives in Redis; pools and limits built from here on
        # take it (usher.state.cluster).
        self.cluster = ClusterLink(config.cluster, self.clock) if config.cluster else None
        install_cluster(self.cluster)
        if self.cluster is not None:
            self.cluster.on_ejection = self._ejected_elsewhere
        self.pools: dict[str, Pool] = {
            name: self.new_pool(name, cfg) for name, cfg in config.pools.items()
        }
        self.metrics = Metrics()
        # Read through lambdas: a reload replaces the pools and listeners.
        self.registry = build_registry(
            self.metrics,
            lambda: self.pools,
            lambda: {name: len(lst.connections) for name, lst in self.listeners.items()},
        )
        self.register_cluster_metrics()
        # Active checks and agent polls, one task per backend; idle for pools without them.
        self.checkers: dict[str, HealthChecker] = {}
        if control_plane:
            self.checkers = {name: self._checker(pool) for name, pool in self.pools.items()}
        self._tls, upstream_tls = self.load_tls(config)
        for name, pool in self.pools.items():
            pool.use_tls_context(upstream_tls.get(name))
        self.listeners: dict[str, AnyListener] = {
            lc.name: self.new_listener(lc, self.router(lc, self.pools)) for lc in config.listeners
        }
        self._servers: dict[str, Serving] = {}
        self.bound: dict[str, Bound] = {}
        self.runtime_changes: list[tuple[str, str, str]] = []  # (pool, address, what)
        self._background: set[asyncio.Task[Any]] = set()
        self._reload_lock = asyncio.Lock()
        self._admin: uvicorn.Server | None = None
        self.discovery = DiscoveryRunner(self)
        self._admin_task: asyncio.Task[Any] | None = None
        self._admin_socket: socket.socket | None = None
        self.admin_url: str | None = None

    def load_tls(self, config: Config) -> tuple[dict[str, ServerTls], dict[str, ssl.SSLContext]]:
        """Every TLS file of `config`, read now: the listeners' and the pools' contexts."""
        tls: dict[str, ServerTls] = {}
        issues: list[ConfigIssue] = []
        for i, lc in enumerate(config.listeners):
            if lc.protocol == "https" and lc.tls is not None:
                try:
                    tls[lc.name] = ServerTls(lc.tls, f"listeners[{i}].tls", http2=lc.serves_http2)
                except ConfigError as exc:
                    issues.extend(exc.issues)
        upstream: dict[str, ssl.SSLContext] = {}
        try:
            upstream = load_upstream_contexts(config.pools)
        except ConfigError as exc:
            issues.extend(exc.issues)
        if issues:
            raise ConfigError(issues)
        return tls, upstream

    def new_pool(self, name: str, config: PoolConfig) -> Pool:
        return Pool(name, config, self.clock, seed=self.seed)

    def new_listener(self, lc: Listener, router: Router) -> AnyListener:
        """A listener of this balancer, not yet bound, routing with `router`."""
        return build_listener(
            lc,
            router,
            clock=self.clock,
            access_log=self.access_log,
            metrics=self.metrics,
            workers=self.worker_count,
        )

    def router(self, lc: Listener, pools: Mapping[str, Pool]) -> Router:
        """A listener's routes, each with its hooks."""
        hooks = self.hooks.get(lc.name)
        return Router(lc.effective_routes(), pools, hooks, shorthand=lc.pool is not None)

    def _checker(self, pool: Pool) -> HealthChecker:
        name = pool.name
        metrics = self.metrics

        def counted(backend: Backend, ok: bool, detail: str, at: float) -> None:
            metrics.health_check(name, backend.label, ok)

        return HealthChecker(pool, self.clock, on_result=counted)

    # Serving

    def register_cluster_metrics(self) -> None:
        """`usher_cluster_up` in this balancer's registry, with `cluster:`."""
        if self.cluster is not None:
            self.registry.register(CallbackCollector(self.cluster.collect))

    def _ejected_elsewhere(self, pool_name: str, address: str, seconds: float) -> None:
        """Another node ejected a backend (usher.state.redis): so does this one."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return
        for backend in pool.backends:
            if backend.label == address:
                now = self.clock.now()
                pool.ejected_elsewhere(backend, now + seconds, now, "ejected by another node")

    async def start(self) -> None:
        if self.cluster is not None:
            self.cluster.start()
        for checker in self.checkers.values():
            checker.start()
        if self.runs_control_plane:
            self.discovery.update(self.config.pools)
        try:
            for listener in self.listeners.values():
                await self._serve(listener)
            if self.runs_control_plane and self.config.admin is not None:
                await self._start_admin()
        except BindError:
            await self.stop(timeout=0)
            raise

    async def _serve(self, listener: AnyListener) -> None:
        server, bound = await self.bind(listener)
        self._servers[listener.name] = server
        self.bound[listener.name] = bound

    async def bind(self, listener: AnyListener) -> tuple[Serving, Bound]:
        """Open `listener`'s sockets (serve them, or only hold their address)."""
        lc = listener.config
        try:
            server = await self._open_sockets(listener)
        except OSError as exc:
            raise BindError(
                f"listener {lc.name}: cannot listen on {lc.bind}: {exc.strerror or exc}"
            ) from exc
        sockname = server.sockets[0].getsockname()
        return server, Bound(lc.name, sockname[0], sockname[1], lc.protocol)

    async def _serve_sockets(self, listener: AnyListener) -> Serving:
        """Serve `listener` in this process, with the TLS context its config has now."""
        name = listener.config.name

        def tls() -> ssl.SSLContext | None:
            current = self._tls.get(name)
            return current.context if current is not None else None

        return await bind_listener(listener, tls, reuse_port=self.reuse_port)

    async def _start_admin(self) -> None:
        import uvicorn

        from usher.admin.api import create_app

        admin = self.config.admin
        assert admin is not None
        sock = handover.claim(handover.key_for(admin.bind.host, admin.bind.port))
        if sock is None:
            family = socket.AF_INET6 if ":" in admin.bind.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((admin.bind.host, admin.bind.port))
            except OSError as exc:
                sock.close()
                raise BindError(
                    f"admin: cannot listen on {admin.bind}: {exc.strerror or exc}"
                ) from exc
        self._admin_socket = sock
        host, port = sock.getsockname()[:2]
        self.admin_url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        config = uvicorn.Config(
            create_app(self), log_level="warning", access_log=False, lifespan="off"
        )
        self._admin = uvicorn.Server(config)
        self._admin_task = asyncio.create_task(self._admin.serve(sockets=[sock]))
        while not self._admin.started and not self._admin_task.done():
            await asyncio.sleep(0.01)

    def listening_fds(self) -> list[int]:
        """The descriptors an upgrade hands over: every listener's sockets and the admin's."""
        fds = [sock.fileno() for server in self._servers.values() for sock in server.sockets]
        return [fd for fd in fds if fd >= 0] + self.admin_fds()

    def admin_fds(self) -> list[int]:
        if self._admin is None or self._admin_socket is None or self._admin_socket.fileno() < 0:
            return []
        return [self._admin_socket.fileno()]

    def stop_admin_accepting(self) -> None:
        """Another process serves the admin API from now on (an upgrade): accept no more."""
        if self._admin is not None:
            for server in self._admin.servers:
                server.close()

    async def stop(self, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), then close all."""
        await self.discovery.stop()
        for server in self._servers.values():
            server.close()
        for listener in self.listeners.values():
            listener.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(lst.connections for lst in self.listeners.values()) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for listener in self.listeners.values():
            connections: list[Abortable] = list(listener.connections)
            for conn in connections:
                conn.abort()
        for pool in self.pools.values():
            for backend in pool.backends:
                backend.close_idle()
        for server in self._servers.values():
            await server.wait_closed()
        self._servers.clear()
        for checker in self.checkers.values():
            await checker.stop()
        for task in list(self._background):
            task.cancel()
        if self._admin is not None and self._admin_task is not None:
            self._admin.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await self._admin_task
            self._admin = None
        if self.cluster is not None:
            await self.cluster.stop()

    async def __aenter__(self) -> Balancer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(timeout=1.0)

    # Views

    def wall_offset(self) -> float:
        """What turns the balancer clock's readings into wall-clock times (for the API)."""
        return time.time() - self.clock.now()

    def describe(self) -> dict[str, Any]:
        offset = self.wall_offset()
        return {
            "listeners": [
                {
                    "name": name,
                    "protocol": listener.config.protocol,
                    "bind": str(listener.config.bind),
                    "url": self.bound[name].url if name in self.bound else None,
                    "connections": len(listener.connections),
                }
                for name, listener in self.listeners.items()
            ],
            "pools": {name: describe_pool(pool, offset) for name, pool in self.pools.items()},
        }

    def describe_dns(self) -> list[dict[str, Any]]:
        """Every dns listener's records and the sites they point at (`GET /api/dns`)."""
        return [
            {**listener.describe(), "url": self.bound[name].url if name in self.bound else None}
            for name, listener in self.listeners.items()
            if isinstance(listener, DnsListener)
        ]

    def sync_counts(self) -> None:
        """Bring the backends' requests in flight up to date before a change that depends on
        them (the control process of several workers reads the workers'); one process counts
        in place."""
        return None

    async def before_scrape(self) -> None:
        """Bring the metrics up to date before `/metrics` renders them (the control process of
        several workers collects theirs here); one process counts in place."""
        return None

    def pool(self, name: str) -> Pool:
        pool = self.pools.get(name)
        if pool is None:
            raise ChangeError(404, f"no pool {name!r} (known: {', '.join(sorted(self.pools))})")
        return pool

    def backend(self, pool_name: str, address: str) -> tuple[Pool, Backend]:
        pool = self.pool(pool_name)
        backend = pool.find(address)
        if backend is None:
            raise ChangeError(404, f"no backend {address} in pool {pool_name}")
        return pool, backend

    # Runtime changes (the admin API)

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
        try:
            config = BackendConfig.model_validate(
                {
                    "address": address,
                    "weight": weight,
                    "backup": backup,
                    "max_connections": max_connections,
                }
            )
        except ValueError as exc:
            raise ChangeError(400, _first_error(exc)) from None
        if pool.find(str(config.address)) is not None:
            raise ChangeError(409, f"backend {config.address} is already in pool {pool_name}")
        backend = pool.add_backend(config, ADMIN_SOURCE)
        self.checkers[pool_name].add_backend(backend)
        self.runtime_changes.append((pool_name, backend.label, "added"))
        return backend

    def update_backend(
        self, pool_name: str, address: str, *, weight: int | None = None, state: str | None = None
    ) -> Backend:
        pool, backend = self.backend(pool_name, address)
        if weight is not None:
            if weight <= 0:
                raise ChangeError(400, f"weight must be > 0 (got {weight})")
            pool.set_weight(backend, weight)
            self.runtime_changes.append((pool_name, backend.label, f"weight {weight}"))
        if state is not None:
            if state not in ("enabled", "draining", "disabled"):
                raise ChangeError(
                    400, f"state must be enabled, draining or disabled (got {state!r})"
                )
            if state == "draining":
                pool.set_state(backend, "draining", "draining")  # visible in this very answer
                self.spawn(pool.drain(backend))
            else:
                target: State = "enabled" if state == "enabled" else "disabled"
                pool.set_state(backend, target)
        return backend

    async def remove_backend(
        self, pool_name: str, address: str, *, timeout: float | None = None
    ) -> bool:
        """Drain the backend, then remove it; returns whether it drained before the timeout."""
        pool, backend = self.backend(pool_name, address)
        change = (pool_name, backend.label, "removed")
        self.runtime_changes.append(change)
        clean = await pool.drain(backend, timeout=timeout, remove=True)
        if backend in pool.backends:  # set to another state while it drained: that call won
            self.runtime_changes.remove(change)
            raise ChangeError(
                409,
                f"removal of backend {backend.label} from pool {pool_name} called off: "
                f"it was set to {backend.state} while it drained",
            )
        self.checkers[pool_name].remove_backend(backend)
        return clean

    def spawn(self, coro: Any) -> None:
        """Run `coro` in the background; stop() cancels it."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # Reload

    async def reload(self, config: Config | None = None) -> ReloadReport:
        """Apply a new config (default: re-read the file). Raises ConfigError when it is
        invalid and BindError when a new listener cannot bind: either way nothing changes.
        Reloads run one at a time, whether from SIGHUP or the admin API."""
        async with self._reload_lock:
            return await self._reload(config)

    async def _reload(self, config: Config | None) -> ReloadReport:
        if config is None:
            if self.config_path is None:
                raise ChangeError(400, "this balancer was not started from a config file")
            config = load_config(self.config_path)
        else:
            # Validated elsewhere: a worker is sent its config, and re-imports the user's code.
            _import_user_code(config, fresh=True)
        self.hooks = build_hooks(config, fresh=True)  # before anything changes: may refuse it
        ports = {name: bound.port for name, bound in self.bound.items()}
        return await reload.apply(self, reload.plan(self.config, config, ports))

    def _as_bound(self, lc: Listener) -> Listener:
        """A listener config with the port it actually got, when it asked for port 0."""
        bound = self.bound.get(lc.name)
        return reload.as_bound(lc, bound.port if bound is not None else None)

    def restart_checkers(self, pools: Iterable[str]) -> None:
        """New checkers for the reloaded pools; each starts from its backends' current health."""
        for name in list(self.checkers):
            self.spawn(self.checkers.pop(name).stop())
        for name in pools:
            checker = self._checker(self.pools[name])
            self.checkers[name] = checker
            checker.start()

    async def drain_out(self, pool_name: str, backend: Backend) -> None:
        """A backend a reload dropped: it drains, then goes."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return
        await pool.drain(backend, remove=True)
        checker = self.checkers.get(pool_name)
        if checker is not None:
            checker.remove_backend(backend)

    async def retire_pool(self, pool: Pool) -> None:
        """A pool a reload removed: its backends drain, then their idle connections close."""
        await asyncio.gather(*(pool.drain(b) for b in list(pool.backends)))
        for backend in pool.backends:
            backend.close_idle()


def _import_user_code(config: Config, *, fresh: bool) -> None:
    """Make the config's custom algorithms importable and loaded in this process (a worker
    receives a config validated by the control process); `fresh` re-imports them (a reload)."""
    custom_algorithms.add_python_path(config.python_path)
    custom_algorithms.begin_load()
    for name, pool in config.pools.items():
        if custom_algorithms.is_import_path(pool.algorithm):
            try:
                custom_algorithms.load(pool.algorithm, fresh=fresh)
            except ValueError as exc:
                raise ConfigError([ConfigIssue(f"pools.{name}.algorithm", str(exc))]) from None


def _first_error(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        for error in errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            return f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg"))
    return str(exc)
