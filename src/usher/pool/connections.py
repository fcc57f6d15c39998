"""What the pool asks of a backend's upstream connections, without knowing what they are.

The pool layer does not import HTTP. A `Backend` holds its keep-alive connections as
`BackendConnections`: the few calls the pool makes on them (take the pool's settings at start
and on a reload, renew them when a reload changes how connections are made, close the idle
ones on drain and stop) and the live state the backend shows (its idle list and generation).

The http layer provides the implementation: importing `usher.http.connection_pool` installs
its `ConnectionPool` as the factory every new backend takes its connections from, the way
`usher.state.install` hands the pool its shared state. Every process that serves HTTP loads
it before it builds a pool (the data plane imports the http layer at module level). Until
then, as in `usher simulate` or a bare pool under test, a backend has `NoConnections`: there
is nothing to configure, renew or close.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from usher.clock import Clock
    from usher.config import PoolConfig
    from usher.pool.backend import Backend

# The pool's client TLS context for its backends, built on first use (usher.tls.UpstreamContext).
TlsContext = Callable[[], ssl.SSLContext | None]


class BackendConnections(Protocol):
    """A backend's upstream connections, as the pool sees them."""

    @property
    def idle(self) -> Sequence[object]:
        """The idle keep-alive connections, most recently used last."""
        ...

    @property
    def generation(self) -> int:
        """Bumped by `renew`: connections of an older generation are not reused."""
        ...

    def configure(self, config: PoolConfig, tls_context: TlsContext, clock: Clock) -> None:
        """Take the pool's settings (at start and on a reload) for the connections made next."""
        ...

    def renew(self) -> None:
        """Connections opened so far must not carry another request (their settings changed)."""
        ...

    def close_idle(self) -> None:
        """Close the idle connections (drain, stop, a backend leaving the pool)."""
        ...


class NoConnections:
    """The connections of a backend in a process with no HTTP layer loaded: none at all."""

    __slots__ = ()

    def __init__(self, backend: Backend) -> None:
        del backend  # the factory's signature; nothing is kept

    @property
    def idle(self) -> Sequence[object]:
        return ()

    @property
    def generation(self) -> int:
        return 0

    def configure(self, config: PoolConfig, tls_context: TlsContext, clock: Clock) -> None:
        """Nothing is ever connected, so no setting is ever used."""

    def renew(self) -> None:
        """No connection was ever opened."""

    def close_idle(self) -> None:
        """No connection is ever idle."""

    def __repr__(self) -> str:
        return "<NoConnections>"


ConnectionsFactory = Callable[["Backend"], BackendConnections]

_factory: ConnectionsFactory = NoConnections


def install(factory: ConnectionsFactory) -> ConnectionsFactory:
    """Give every backend built from now on its connections from `factory` (the http layer
    installs its ConnectionPool when it is imported); returns the factory it replaces."""
    global _factory
    previous, _factory = _factory, factory
    return previous


def connections_for(backend: Backend) -> BackendConnections:
    """New connections for `backend`, from the installed factory."""
    return _factory(backend)
