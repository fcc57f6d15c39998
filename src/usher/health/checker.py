"""The tasks that run a pool's active health checks and tell the pool of each new verdict."""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from usher.clock import Clock
from usher.health.probes import (
    Result,
    pool_tls_or_error,
    probe_agent,
    probe_http,
    probe_tcp,
    probe_udp,
    tls_or_error,
)
from usher.health.state import HealthState, jittered
from usher.proxy_protocol import encode_v1, encode_v2_local

if TYPE_CHECKING:
    from usher.config import AgentOptions, HealthCheck, PoolConfig
    from usher.pool import Backend

log = logging.getLogger("usher.health")

# Spread of agent polls that are not a health check (agent options have no jitter of their own).
AGENT_JITTER = 0.1

OnResult = Callable[["Backend", bool, str, float], None]


class CheckedPool(Protocol):
    """What the checker needs of a pool (`usher.pool.Pool` is one)."""

    @property
    def name(self) -> str: ...

    @property
    def config(self) -> PoolConfig: ...

    @property
    def backends(self) -> Sequence[Backend]: ...

    def set_healthy(self, backend: Backend, healthy: bool, reason: str) -> None: ...


Sleep = Callable[[float], Awaitable[None]]


class HealthChecker:
    """Runs a pool's active checks: one task per backend, so a slow one delays no other.

    Each task loops: probe, record, apply, sleep. A change of verdict goes to
    `pool.set_healthy(backend, healthy, reason)`; every result to `on_result(backend, ok,
    detail, at)` and `backend.last_check`. When the pool has `agent` options, each backend's
    load report is polled every `agent.interval` into `backend.load` (None while it cannot be
    had); with `health_check.type: agent` that same poll is the health check (one request per
    interval, on the agent's interval and timeout, with the check's thresholds).
    """

    def __init__(
        self,
        pool: CheckedPool,
        clock: Clock,
        *,
        rng: random.Random | None = None,
        on_result: OnResult | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.rng = rng or random.Random()
        self.on_result = on_result
        self._sleep = sleep
        config = pool.config
        self.agent: AgentOptions | None = config.agent
        check = config.health_check
        if check is not None and check.type == "agent" and self.agent is not None:
            check = check.model_copy(
                update={"interval": self.agent.interval, "timeout": self.agent.timeout}
            )
        self.check: HealthCheck | None = check
        self.states: dict[Backend, HealthState] = {}
        self._tasks: dict[Backend, list[asyncio.Task[None]]] = {}
        self._stopping: set[asyncio.Task[None]] = set()
        # Built once: it reads the CA file. A CA that cannot be loaded fails every check.
        # A backend that expects PROXY headers gets one on http checks too: a LOCAL one (v2) or
        # UNKNOWN (v1), which say "the balancer's own connection" (HAProxy's check-send-proxy).
        self._proxy_header: bytes | None = None
        if config.send_proxy_protocol == "v2":
            self._proxy_header = encode_v2_local()
        elif config.send_proxy_protocol == "v1":
            self._proxy_header = encode_v1(None, None)
        self._ssl: ssl.SSLContext | str | None = None
        if check is not None and check.type == "http" and check.tls:
            self._ssl = tls_or_error(check)
        elif (
            check is not None
            and check.type == "http"
            and config.tls is not None
            and "tls" not in check.model_fields_set
        ):
            # A pool that re-encrypts is checked the way it is used: over the same TLS.
            self._ssl = pool_tls_or_error(config.tls)
            self.check = check.model_copy(
                update={
                    "tls": True,
                    "tls_server_name": check.tls_server_name or config.tls.server_name,
                }
            )

    @property
    def enabled(self) -> bool:
        return self.check is not None or self.agent is not None

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """Every task still running (or being cancelled)."""
        running = [t for tasks in self._tasks.values() for t in tasks]
        return running + [t for t in self._stopping if not t.done()]

    def state_of(self, backend: Backend) -> HealthState | None:
        return self.states.get(backend)

    def start(self) -> None:
        """Start checking every backend of the pool (needs a running event loop)."""
        for backend in list(self.pool.backends):
            self.add_backend(backend)

    async def stop(self) -> None:
        """Cancel every task and wait until they are gone."""
        for backend in list(self._tasks):
            self.remove_backend(backend)
        pending = list(self._stopping)
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def add_backend(self, backend: Backend) -> None:
        """Start checking `backend` (nothing when it is checked already, or nothing is on)."""
        if backend in self._tasks or not self.enabled:
            return
        tasks: list[asyncio.Task[None]] = []
        name = f"{self.pool.name} {backend.label}"
        check = self.check
        if check is not None:
            state = HealthState(check, healthy=backend.healthy)
            self.states[backend] = state
            tasks.append(
                asyncio.create_task(self._check_loop(backend, state), name=f"health {name}")
            )
        if self.agent is not None and (check is None or check.type != "agent"):
            tasks.append(asyncio.create_task(self._agent_loop(backend), name=f"agent {name}"))
        self._tasks[backend] = tasks

    def remove_backend(self, backend: Backend) -> None:
        """Stop checking `backend`; `stop()` waits for its tasks if they are not gone yet."""
        self.states.pop(backend, None)
        for task in self._tasks.pop(backend, []):
            task.cancel()
            self._stopping.add(task)
            task.add_done_callback(self._stopping.discard)

    # the tasks

    async def _probe(self, backend: Backend) -> Result:
        check = self.check
        assert check is not None
        host, port = backend.host, backend.port
        if check.type == "http":
            if isinstance(self._ssl, str):
                return False, self._ssl
            return await probe_http(
                host, port, check, ssl_context=self._ssl, preamble=self._proxy_header
            )
        if check.type == "udp":
            return await probe_udp(host, port, check)
        if check.type == "agent" and self.agent is not None:
            ok, detail, load = await probe_agent(host, port, self.agent)
            backend.load = load
            return ok, detail
        return await probe_tcp(host, port, check)

    async def _check_loop(self, backend: Backend, state: HealthState) -> None:
        check = state.check
        # Spread the first round too, so backends started together are not checked together.
        await self._sleep(self.rng.uniform(0, check.interval * check.jitter))
        while True:
            started = time.perf_counter()
            ok, detail = await self._probe(backend)
            backend.check_rtt = time.perf_counter() - started if ok else None
            self._record(backend, state, ok, detail)
            await self._sleep(state.next_delay(self.rng))

    def _record(self, backend: Backend, state: HealthState, ok: bool, detail: str) -> None:
        now = self.clock.now()
        backend.last_check = (ok, now, detail)
        transition = state.record(ok, detail, at=now)
        # A failing hook must not end the checks of this backend.
        if self.on_result is not None:
            try:
                self.on_result(backend, ok, detail, now)
            except Exception:
                log.exception("health check hook failed for %s", backend.label)
        if transition is not None:
            try:
                self.pool.set_healthy(backend, transition.healthy, transition.reason)
            except Exception:
                log.exception("cannot apply health of %s", backend.label)

    async def _agent_loop(self, backend: Backend) -> None:
        agent = self.agent
        assert agent is not None
        await self._sleep(self.rng.uniform(0, agent.interval * AGENT_JITTER))
        reachable = True
        while True:
            ok, detail, load = await probe_agent(backend.host, backend.port, agent)
            backend.load = load
            if ok != reachable:
                reachable = ok
                if ok:
                    log.info("load report of %s is back: %s", backend.label, detail)
                else:
                    log.warning("no load report from %s: %s", backend.label, detail)
            await self._sleep(jittered(agent.interval, AGENT_JITTER, self.rng))

    def __repr__(self) -> str:
        kind = self.check.type if self.check is not None else "agent only"
        return f"<HealthChecker {self.pool.name} [{kind}, {len(self._tasks)} backends]>"
