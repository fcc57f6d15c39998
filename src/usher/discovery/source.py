"""What every discovery source is: a name and an endless stream of complete backend sets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import ValidationError

from usher.config import BackendConfig, Discovery, DnsDiscovery, EtcdDiscovery
from usher.errors import SourceError as SourceError


class Source(Protocol):
    label: str  # the `source` the admin API shows: dns:NAME, etcd:PREFIX, file:PATH
    retry: float  # seconds before trying again after a SourceError

    def updates(self) -> AsyncIterator[list[BackendConfig]]:
        """Yield the whole set each time it may have changed; raise SourceError on failure."""
        ...


def source_label(config: Discovery) -> str:
    if isinstance(config, DnsDiscovery):
        return f"dns:{config.name}"
    if isinstance(config, EtcdDiscovery):
        return f"etcd:{config.prefix}"
    return f"file:{config.path}"


def parse_entry(value: Any, where: str) -> BackendConfig:
    """One backend entry as a pool's `backends` has them, or a plain "host:port" string."""
    data = {"address": value} if isinstance(value, str) else value
    try:
        return BackendConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
        )
        raise SourceError(f"{where}: {problems}") from None


def require_some(found: list[BackendConfig], where: str) -> list[BackendConfig]:
    """An empty answer is taken as a failure: a source never empties a pool."""
    if not found:
        raise SourceError(f"{where} lists no backends")
    return found
