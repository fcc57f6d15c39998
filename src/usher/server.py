"""The running balancer: pools, routers and listeners built from a config; serve; drain."""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from usher.clock import Clock, MonotonicClock
from usher.config import Config
from usher.errors import ConfigError, ConfigIssue, UsherError
from usher.health import HealthChecker
from usher.http.proxy import HttpListener
from usher.logs import AccessLog
from usher.pool import Pool, build_pools
from usher.routing import Router
from usher.tls import server_context

# How long SIGTERM waits for in-flight requests before cutting them.
DEFAULT_DRAIN_TIMEOUT = 30.0


class BindError(UsherError):
    """A listener could not bind its address (in use, not permitted, no such address)."""


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
    ) -> None:
        self.config = config
        self.clock = clock or MonotonicClock()
        self.access_log = access_log or AccessLog(enabled=False)
        self.reuse_port = reuse_port
        self.pools: dict[str, Pool] = build_pools(config.pools.items(), self.clock, seed=seed)
        # Active checks and agent polls, one task per backend; idle for pools without them.
        self.checkers = {name: HealthChecker(pool, self.clock) for name, pool in self.pools.items()}
        self.listeners: list[HttpListener] = []
        self._ssl: dict[str, ssl.SSLContext] = {}
        issues: list[ConfigIssue] = []
        for i, lc in enumerate(config.listeners):
            router = Router(lc.effective_routes(), self.pools)
            self.listeners.append(
                HttpListener(lc, router, clock=self.clock, access_log=self.access_log)
            )
            if lc.protocol == "https" and lc.tls is not None:
                try:
                    self._ssl[lc.name] = server_context(lc.tls, f"listeners[{i}].tls")
                except ConfigError as exc:
                    issues.extend(exc.issues)
        if issues:
            raise ConfigError(issues)
        self._servers: list[asyncio.Server] = []
        self.bound: dict[str, Bound] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for checker in self.checkers.values():
            checker.start()
        try:
            for listener in self.listeners:
                lc = listener.config
                try:
                    server = await loop.create_server(
                        listener,
                        lc.bind.host,
                        lc.bind.port,
                        ssl=self._ssl.get(lc.name),
                        backlog=1024,
                        reuse_port=self.reuse_port or None,
                    )
                except OSError as exc:
                    raise BindError(
                        f"listener {lc.name}: cannot listen on {lc.bind}: {exc.strerror or exc}"
                    ) from exc
                self._servers.append(server)
                sockname = server.sockets[0].getsockname()
                self.bound[lc.name] = Bound(lc.name, sockname[0], sockname[1], lc.protocol)
        except BindError:
            await self.stop(timeout=0)
            raise

    async def stop(self, timeout: float = DEFAULT_DRAIN_TIMEOUT) -> None:
        """Stop accepting, let in-flight requests finish (up to `timeout`), then close all."""
        for server in self._servers:
            server.close()
        for listener in self.listeners:
            listener.drain()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(listener.connections for listener in self.listeners) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for listener in self.listeners:
            for conn in list(listener.connections):
                conn.abort()
        for pool in self.pools.values():
            for backend in pool.backends:
                backend.close_idle()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for checker in self.checkers.values():
            await checker.stop()

    async def __aenter__(self) -> Balancer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop(timeout=1.0)
