"""Tests of pool.connections: the calls the pool makes on a backend's connections, and who
provides them (the http layer, once loaded; none before)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from usher.clock import Clock, ManualClock
from usher.config import PoolConfig
from usher.pool import Backend, Pool
from usher.pool import connections as backend_connections
from usher.pool.connections import NoConnections, TlsContext


class RecordingConnections:
    """A BackendConnections that records what the pool asks of it."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls: list[str] = []
        self.config: PoolConfig | None = None
        self.idle: list[object] = []
        self.generation = 0

    def configure(self, config: PoolConfig, tls_context: TlsContext, clock: Clock) -> None:
        self.calls.append("configure")
        self.config = config
        assert tls_context() is None  # the pool's context: no tls configured, none built

    def renew(self) -> None:
        self.calls.append("renew")
        self.generation += 1

    def close_idle(self) -> None:
        self.calls.append("close_idle")


@pytest.fixture
def recording() -> Iterator[None]:
    previous = backend_connections.install(RecordingConnections)
    try:
        yield
    finally:
        backend_connections.install(previous)


def config(*ports: int, **options: Any) -> PoolConfig:
    backends = [{"address": f"127.0.0.1:{port}"} for port in ports]
    return PoolConfig.model_validate({"backends": backends, **options})


def calls(backend: Backend) -> list[str]:
    connections = backend.connections
    assert isinstance(connections, RecordingConnections) and connections.backend is backend
    return connections.calls


def test_the_pool_configures_each_backends_connections_at_start(recording: None) -> None:
    pool_config = config(9001, 9002)
    pool = Pool("web", pool_config, ManualClock())
    for backend in pool.backends:
        assert calls(backend) == ["configure"]
        assert isinstance(backend.connections, RecordingConnections)
        assert backend.connections.config is pool_config


def test_a_reload_configures_them_again_and_renews_them_when_connecting_changes(
    recording: None,
) -> None:
    pool = Pool("web", config(9001, 9002), ManualClock())
    kept, dropped = pool.backends
    pool.reconfigure(config(9001, 9003))  # same way of connecting: no renewal
    added = pool.find("127.0.0.1:9003")
    assert added is not None and calls(added) == ["configure", "configure"]
    assert calls(kept) == calls(dropped) == ["configure", "configure"]
    pool.reconfigure(config(9001, 9003, send_proxy_protocol="v1"))
    assert calls(kept) == ["configure", "configure", "renew", "configure"]
    assert kept.generation == 1


def test_taking_a_backend_out_closes_its_idle_connections(recording: None) -> None:
    pool = Pool("web", config(9001, 9002), ManualClock())
    disabled, removed = pool.backends
    pool.set_state(disabled, "disabled")
    pool.remove_backend(removed)
    assert calls(disabled) == calls(removed) == ["configure", "close_idle"]


def test_without_the_http_layer_a_backend_has_no_connections() -> None:
    previous = backend_connections.install(NoConnections)
    try:
        pool = Pool("web", config(9001), ManualClock())
    finally:
        backend_connections.install(previous)
    (backend,) = pool.backends
    assert isinstance(backend.connections, NoConnections)
    pool.reconfigure(config(9001, send_proxy_protocol="v2"))  # configure and renew: nothing
    pool.set_state(backend, "disabled")  # close_idle: nothing
    assert backend.idle == () and backend.generation == 0


PROGRAM = """
import sys
from usher.config import HostPort
from usher.pool import Backend
before = Backend(HostPort("127.0.0.1", 9001))
assert not [m for m in sys.modules if m.startswith("usher.http")], "usher.pool loaded http"
import usher.http.connection_pool as http_connections
after = Backend(HostPort("127.0.0.1", 9001))
print(type(before.connections).__name__, type(after.connections).__name__,
      after.connections.backend is after)
"""


def test_importing_the_http_layer_installs_its_connection_pool() -> None:
    # A fresh interpreter: in this one, other tests have loaded usher.http already.
    result = subprocess.run(
        [sys.executable, "-c", PROGRAM], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["NoConnections", "ConnectionPool", "True"]
