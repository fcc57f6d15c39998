"""A backend: one server of a pool, and what usher knows of it right now.

A backend's state, as the admin API shows it:

    disabled   the operator took it out
    draining   no new requests or sticky pins; in-flight ones finish
    unhealthy  failing active checks, or ejected for failures on real traffic
    healthy    takes traffic
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from usher.pool.connections import BackendConnections, connections_for

if TYPE_CHECKING:
    from usher.config import BackendConfig, HostPort
    from usher.shared import Slot

State = Literal["enabled", "draining", "disabled"]
# The sources of backends that the config file owns; any other is a discovery source's.
CONFIG_SOURCE = "config"
ADMIN_SOURCE = "admin"


class Backend:
    """One backend server and what usher knows of it right now."""

    __slots__ = (
        "active",
        "address",
        "backup",
        "check_rtt",
        "connections",
        "drained",
        "effective_weight",
        "ejections",
        "failed_until",
        "fails",
        "fails_5xx",
        "failures_total",
        "healthy",
        "host",
        "label",
        "last_check",
        "last_ejected_at",
        "latency_ewma",
        "load",
        "max_connections",
        "port",
        "ramp_start",
        "reason",
        "requests_total",
        "shared",
        "source",
        "state",
        "weight",
    )

    def __init__(
        self,
        address: HostPort,
        *,
        weight: int = 1,
        backup: bool = False,
        max_connections: int | None = None,
    ) -> None:
        self.address = address
        self.host = address.host
        self.port = address.port
        self.label = str(address)
        self.weight = weight
        self.effective_weight = float(weight)  # a float from the start: compiled, it is a C double
        self.backup = backup
        self.max_connections = max_connections
        self.state: State = "enabled"
        # Active checks' verdict. A backend no check has failed yet takes traffic.
        self.healthy = True
        self.reason = ""  # why the state is what it is, for logs and the admin API
        self.fails = 0  # consecutive failures seen on real traffic
        self.fails_5xx = 0  # consecutive 5xx answers
        self.failed_until = 0.0  # ejected until then
        self.ejections = 0  # ejections in a row: each one lasts longer
        self.last_ejected_at = -1e18
        self.ramp_start: float | None = None
        self.active = 0
        self.requests_total = 0
        self.failures_total = 0
        self.latency_ewma = 0.0
        self.load: float | None = None  # 0..1 as the backend's agent last reported it
        self.last_check: tuple[bool, float, str] | None = None  # (ok, at, detail)
        # The last passing active check's round trip from this node (the DNS latency policy).
        self.check_rtt: float | None = None
        self.drained: asyncio.Event | None = None
        # With several workers: this worker's cells of the shared counts (usher.shared).
        self.shared: Slot | None = None
        # Its keep-alive connections, and the pool settings new ones are made with (the Pool
        # configures it): on the backend, as the connections reach it through their backend.
        # The http layer provides them (usher.pool.connections); the pool does not know HTTP.
        self.connections: BackendConnections = connections_for(self)
        # Where it came from: config, admin, or a discovery source (dns:NAME, etcd:PREFIX,
        # file:PATH); a reload keeps discovered backends, the source itself retires them.
        self.source = CONFIG_SOURCE

    def ready(self, now: float) -> bool:
        """May take a new request: enabled, healthy and not ejected."""
        return self.state == "enabled" and self.healthy and now >= self.failed_until

    def in_flight(self) -> int:
        """Requests in flight to this backend in every worker (in this one when alone)."""
        shared = self.shared
        return self.active if shared is None else shared.total()

    def has_room(self) -> bool:
        """Under `max_connections`, counting every worker's requests."""
        limit = self.max_connections
        if limit is None:
            return True
        shared = self.shared
        return (self.active if shared is None else shared.total()) < limit

    def status(self, now: float) -> str:
        if self.state != "enabled":
            return self.state
        return "healthy" if self.healthy and now >= self.failed_until else "unhealthy"

    @property
    def idle(self) -> Sequence[object]:
        """Idle keep-alive connections to this backend, most recently used last."""
        return self.connections.idle

    @property
    def generation(self) -> int:
        return self.connections.generation

    def close_idle(self) -> None:
        self.connections.close_idle()

    def renew_connections(self) -> None:
        """Connections opened so far must not carry another request (their settings changed)."""
        self.connections.renew()

    def __repr__(self) -> str:
        return f"<Backend {self.label} w={self.weight} {self.state} active={self.active}>"


class BackendSpec:
    """What a backend should be, as `Pool.update` takes it: the config of one, where it comes
    from, and (when given) its admin state and its health verdict, with the reason for them."""

    __slots__ = (
        "address",
        "backup",
        "healthy",
        "max_connections",
        "reason",
        "source",
        "state",
        "weight",
    )

    def __init__(
        self,
        address: HostPort,
        *,
        weight: int = 1,
        backup: bool = False,
        max_connections: int | None = None,
        source: str = CONFIG_SOURCE,
        state: State | None = None,
        healthy: bool | None = None,
        reason: str = "",
    ) -> None:
        self.address = address
        self.weight = weight
        self.backup = backup
        self.max_connections = max_connections
        self.source = source
        self.state = state  # None: as it is
        self.healthy = healthy  # None: as it is
        self.reason = reason

    @classmethod
    def of(cls, config: BackendConfig, source: str = CONFIG_SOURCE) -> BackendSpec:
        return cls(
            config.address,
            weight=config.weight,
            backup=config.backup,
            max_connections=config.max_connections,
            source=source,
        )

    def build(self) -> Backend:
        """A new backend as this spec says (its state and health are the pool's to set)."""
        backend = Backend(
            self.address,
            weight=self.weight,
            backup=self.backup,
            max_connections=self.max_connections,
        )
        backend.source = self.source
        return backend
