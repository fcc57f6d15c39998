"""The admin API's JSON views of the pools: what `GET /api/pools...` answers.

Functions over a pool rather than methods of it: the pool decides, these only show. Times are
the pool clock's readings turned into wall-clock ones by `wall_offset` (wall time minus clock
time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from usher.pool import Backend, Pool


def describe_backend(pool: Pool, backend: Backend, wall_offset: float = 0.0) -> dict[str, Any]:
    """A backend's live state as the admin API shows it."""
    now = pool.clock.now()
    status = backend.status(now)
    last = backend.last_check
    return {
        "address": backend.label,
        "source": backend.source,
        "weight": backend.weight,
        "effective_weight": round(backend.effective_weight, 3),
        "backup": backend.backup,
        "max_connections": backend.max_connections,
        "state": status,
        "admin_state": backend.state,
        "healthy": status == "healthy",
        "reason": backend.reason,
        "active": backend.active,
        "requests_total": backend.requests_total,
        "failures_total": backend.failures_total,
        "latency_ewma_ms": round(backend.latency_ewma * 1000, 3),
        "load": backend.load,
        "last_check": (
            None
            if last is None
            else {"ok": last[0], "at": round(last[1] + wall_offset, 3), "detail": last[2]}
        ),
    }


def describe_pool(pool: Pool, wall_offset: float = 0.0) -> dict[str, Any]:
    """A pool and its backends as the admin API shows them."""
    return {
        "name": pool.name,
        "algorithm": pool.config.algorithm,
        "panic": pool.panicking,
        "queued": len(pool.waiters),
        "backends": [describe_backend(pool, b, wall_offset) for b in pool.backends],
    }
