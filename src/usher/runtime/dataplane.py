"""The data plane: the pools and the listeners one config describes, serving traffic.

It is all a worker of `usher run --workers N` runs, and the half of a one-process balancer
that serves (usher.runtime.controlplane adds the health checks, the admin API, operator changes
and reloads from the file). Building it checks what the model alone cannot (certificates
load); nothing binds a socket until `start()`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from usher.balancing import custom as custom_algorithms
from usher.clock import Clock, MonotonicClock
from usher.config import DEFAULT_DRAIN_TIMEOUT, Config, Listener, PoolConfig
from usher.errors import BindError, ConfigError, ConfigIssue

# Imported for its effect, before any pool is built: the backends' connections are its
# ConnectionPool (usher.pool.connections), whichever listeners the config has.
from usher.http import connection_pool  # noqa: F401
from usher.http.hook_phases import build_hooks
from usher.listeners import Abortable, AnyListener, Serving, bind_listener, build_listener
from usher.logs import AccessLog
from usher.metrics import Metrics
from usher.pool import Pool
from usher.process.sync import PoolsState, apply_state, detach
from usher.routing import Router
from usher.state import install_cluster
from usher.state.redis import ClusterLink
from usher.tls import ServerTls, load_upstream_contexts

if TYPE_CHECKING:
    from usher.shared import SharedTable

# What opens a listener's sockets: by default they are served in this process; the control
# process of several workers only holds their addresses (usher.process.reserve).
OpenSockets = Callable[[AnyListener], Awaitable[Serving]]

# How often a stop looks whether the in-flight requests have finished.
DRAIN_POLL = 0.02


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


@dataclass(frozen=True, slots=True)
class Follower:
    """A worker's place in the control process's shared count table: the state it is sent
    (`DataPlane.apply`) attaches its backends to their rows there."""

    table: SharedTable
    number: int


class DataPlane:
    """Pools and listeners from a config; start, drain and stop; `apply` the backends' state
    decided elsewhere (a worker follows its control process)."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        access_log: AccessLog | None = None,
        seed: int = 0,
        reuse_port: bool = False,
        workers: int = 1,
        open_sockets: OpenSockets | None = None,
        follower: Follower | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.access_log = access_log or AccessLog(enabled=False)
        self.seed = seed
        self.reuse_port = reuse_port
        self.worker_count = workers  # each enforces its share of the rate and connection limits
        self.follower = follower
        self._open_sockets = open_sockets or self._serve_sockets
        import_user_code(config, fresh=False)
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
        self.tls, upstream_tls = load_tls(config)
        for name, pool in self.pools.items():
            pool.use_tls_context(upstream_tls.get(name))
        self.listeners: dict[str, AnyListener] = {
            lc.name: self.new_listener(lc, self.router(lc, self.pools)) for lc in config.listeners
        }
        self.servers: dict[str, Serving] = {}
        self.bound: dict[str, Bound] = {}

    def router(self, lc: Listener, pools: Mapping[str, Pool]) -> Router:
        """A listener's routes, each with its hooks."""
        hooks = self.hooks.get(lc.name)
        return Router(lc.effective_routes(), pools, hooks, shorthand=lc.pool is not None)

    def new_pool(self, name: str, config: PoolConfig) -> Pool:
        return Pool(name, config, self.clock, seed=self.seed)

    def new_listener(self, lc: Listener, router: Router) -> AnyListener:
        """A listener of this data plane, not yet bound, routing with `router`."""
        return build_listener(
            lc,
            router,
            clock=self.clock,
            access_log=self.access_log,
            metrics=self.metrics,
            workers=self.worker_count,
        )

    def _ejected_elsewhere(self, pool_name: str, address: str, seconds: float) -> None:
        """Another node ejected a backend (usher.state.redis): so does this one."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return
        for backend in pool.backends:
            if backend.label == address:
                now = self.clock.now()
                pool.ejected_elsewhere(backend, now + seconds, now, "ejected by another node")

    # Serving

    async def start(self) -> None:
        """Open every listener's sockets; raises BindError (and closes what it opened) when
        one cannot bind."""
        if self.cluster is not None:
            self.cluster.start()
        try:
            for listener in self.listeners.values():
                server, bound = await self.bind(listener)
                self.servers[listener.name] = server
                self.bound[listener.name] = bound
        except BindError:
            await self.stop(timeout=0)
            raise

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
            current = self.tls.get(name)
            return current.context if current is not None else None

        return await bind_listener(listener, tls, reuse_port=self.reuse_port)

    def listening_fds(self) -> list[int]:
        """The descriptors of every listener's sockets (an upgrade hands them over)."""
        fds = [sock.fileno() for server in self.servers.values() for sock in server.sockets]
        return [fd for fd in fds if fd >= 0]

    def connections(self) -> dict[str, int]:
        """Open client connections (or UDP sessions) per listener."""
        return {name: len(listener.connections) for name, listener in self.listeners.items()}

    async def stop(self, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), then close all."""
        for server in self.servers.values():
            server.close()
        for listener in self.listeners.values():
            listener.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(lst.connections for lst in self.listeners.values()) and loop.time() < deadline:
            await asyncio.sleep(DRAIN_POLL)
        for listener in self.listeners.values():
            connections: list[Abortable] = list(listener.connections)
            for conn in connections:
                conn.abort()
        for pool in self.pools.values():
            for backend in pool.backends:
                backend.close_idle()
        for server in self.servers.values():
            await server.wait_closed()
        self.servers.clear()
        if self.cluster is not None:
            await self.cluster.stop()

    # Following the control process (a worker)

    def apply(self, state: PoolsState) -> None:
        """Make the pools match the backends' state as the control process decided it."""
        follower = self.follower
        table, number = (follower.table, follower.number) if follower else (None, 0)
        apply_state(self.pools, state, table, number)

    async def retire(self, pool: Pool) -> None:
        """A pool a reload removed: its backends drain, then their idle connections close.
        A worker's rows go back to the control process at once."""
        if self.follower is not None:
            for backend in pool.backends:
                detach(backend)
        await asyncio.gather(*(pool.drain(b) for b in list(pool.backends)))
        for backend in pool.backends:
            backend.close_idle()


def load_tls(config: Config) -> tuple[dict[str, ServerTls], dict[str, ssl.SSLContext]]:
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


def import_user_code(config: Config, *, fresh: bool) -> None:
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
