"""Pools: the live state of each backend, and the choice of one for a request.

The face of the package; each job has its module:

    backend      Backend, the record of one server, its State; BackendSpec, what one should be
    connections  BackendConnections, what the pool asks of a backend's connections (http's)
    selection    Selection, the request side of a choice; RetryBudget
    outlier      passive health: ejections from real traffic, panic mode
    slow_start   the effective weight's ramp
    persistence  session persistence (`sticky`)
    pool         Pool: tiers, selection, the wait queue, draining, reloads
"""

from __future__ import annotations

from usher.pool.backend import ADMIN_SOURCE, CONFIG_SOURCE, Backend, BackendSpec, State
from usher.pool.pool import Pool
from usher.pool.selection import RetryBudget, Selection

__all__ = [
    "ADMIN_SOURCE",
    "CONFIG_SOURCE",
    "Backend",
    "BackendSpec",
    "Pool",
    "RetryBudget",
    "Selection",
    "State",
]
