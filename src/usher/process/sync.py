"""The backends' state as the control process decides it, and how a worker takes it on.

With several workers, health checks, admin changes and drains happen in the control process
only. It sends each worker the whole state of every pool (`pools_state`) whenever it differs
from what it sent last, and once at a worker's start; the worker makes its pools match
(`apply_state`). Sending the whole state rather than events means a message lost to a dying
worker, or a worker started late, can never leave it out of step: the next one is complete.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from usher.config import BackendConfig, HostPort
from usher.pool import BackendSpec

if TYPE_CHECKING:
    from usher.pool import Backend, Pool, State
    from usher.shared import RowIndex, SharedTable


@dataclass(frozen=True, slots=True)
class BackendState:
    """What the control process decides about one backend."""

    address: str
    weight: int
    backup: bool
    max_connections: int | None
    state: State  # what the operator (or a drain) set
    healthy: bool  # the active checks' verdict
    reason: str
    load: float | None  # the agent's last report
    row: int | None  # its row in the shared counts (None: the table is full)
    check_rtt: float | None = None  # the last passing health check's round trip
    source: str = "config"  # config, admin or a discovery source: a reload keeps discovered ones


PoolsState = dict[str, tuple[BackendState, ...]]


def pools_state(pools: Mapping[str, Pool], rows: RowIndex) -> PoolsState:
    """The state to send, assigning table rows to backends that have none yet."""
    return {
        name: tuple(
            BackendState(
                address=b.label,
                weight=b.weight,
                backup=b.backup,
                max_connections=b.max_connections,
                state=b.state,
                healthy=b.healthy,
                reason=b.reason,
                load=b.load,
                row=rows.assign(name, b.label),
                check_rtt=b.check_rtt,
                source=b.source,
            )
            for b in pool.backends
        )
        for name, pool in pools.items()
    }


def apply_state(
    pools: Mapping[str, Pool], state: PoolsState, table: SharedTable | None, worker: int
) -> None:
    """Make this worker's pools match the control process's state. Backends it does not list
    leave (their in-flight requests finish on the objects they hold); pools it does not list
    are left alone (the next reload message settles them)."""
    with quiet_state_log():
        for name, backends in state.items():
            pool = pools.get(name)
            if pool is not None:
                _apply_pool(pool, backends, table, worker)


@contextlib.contextmanager
def quiet_state_log() -> Iterator[None]:
    """The control process logs each change of a backend's state; N workers repeating it as
    they follow would be noise."""
    health_log = logging.getLogger("usher.health")
    was_disabled, health_log.disabled = health_log.disabled, True
    try:
        yield
    finally:
        health_log.disabled = was_disabled


def _apply_pool(
    pool: Pool, wanted: tuple[BackendState, ...], table: SharedTable | None, worker: int
) -> None:
    known = {b.label: b for b in pool.backends}
    for backend in pool.update([_spec(s, known.get(s.address)) for s in wanted]):
        detach(backend)
        pool.remove_backend(backend)
    by_label = {b.label: b for b in pool.backends}
    for s in wanted:
        backend = by_label[s.address]
        backend.load = s.load
        backend.check_rtt = s.check_rtt
        _attach(backend, table, s.row, worker)


def _spec(s: BackendState, known: Backend | None) -> BackendSpec:
    """What the pool's update takes; the address is parsed only for a backend new here."""
    address = known.address if known is not None else _address(s.address)
    return BackendSpec(
        address,
        weight=s.weight,
        backup=s.backup,
        max_connections=s.max_connections,
        source=s.source,
        state=s.state,
        healthy=s.healthy,
        reason=s.reason,
    )


def _address(text: str) -> HostPort:
    return BackendConfig.model_validate({"address": text}).address


def _attach(backend: Backend, table: SharedTable | None, row: int | None, worker: int) -> None:
    if table is None or row is None:
        detach(backend)
        return
    current = backend.shared
    slot = table.slot(row, worker)
    if current is not None and current.same_cell(slot):
        return
    detach(backend)
    backend.shared = slot
    slot.publish(backend)


def detach(backend: Backend) -> None:
    """Stop publishing a backend's counts, and zero this worker's cells of its row."""
    if backend.shared is not None:
        backend.shared.clear()
        backend.shared = None
