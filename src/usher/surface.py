"""What the admin API asks of a running balancer (`ControlSurface`), and what a reload reports.

The admin API depends on this protocol, not on usher.runtime.controlplane, which starts the
API: so neither imports the other. `ControlPlane` implements it, alone (one process) or in
front of the workers (the control process of several).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from prometheus_client import CollectorRegistry

from usher.config import Config
from usher.pool import Backend, Pool


@dataclass
class ReloadReport:
    """What a reload changed, for the log and the admin API."""

    listeners_kept: list[str] = field(default_factory=list)
    listeners_added: list[str] = field(default_factory=list)
    listeners_removed: list[str] = field(default_factory=list)
    pools_added: list[str] = field(default_factory=list)
    pools_removed: list[str] = field(default_factory=list)
    backends_added: list[str] = field(default_factory=list)
    backends_draining: list[str] = field(default_factory=list)
    overwritten: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in self.__dict__.items()}


class ControlSurface(Protocol):
    """The balancer as the admin API sees it: its state, runtime changes and reload. Lookups
    and changes raise `ChangeError` (404 or 400) when they name nothing or ask for nonsense."""

    @property
    def config(self) -> Config: ...

    @property
    def registry(self) -> CollectorRegistry: ...

    def wall_offset(self) -> float: ...

    def describe(self) -> dict[str, Any]: ...

    def describe_dns(self) -> list[dict[str, Any]]: ...

    async def before_scrape(self) -> None: ...

    def pool(self, name: str) -> Pool: ...

    def backend(self, pool_name: str, address: str) -> tuple[Pool, Backend]: ...

    def add_backend(
        self,
        pool_name: str,
        address: str,
        *,
        weight: int = 1,
        backup: bool = False,
        max_connections: int | None = None,
    ) -> Backend: ...

    def update_backend(
        self, pool_name: str, address: str, *, weight: int | None = None, state: str | None = None
    ) -> Backend: ...

    async def remove_backend(
        self, pool_name: str, address: str, *, timeout: float | None = None
    ) -> bool: ...

    async def reload(self, config: Config | None = None) -> ReloadReport: ...
