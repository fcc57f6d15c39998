"""The request side of choosing a backend: who asks, and which backends it already tried."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from usher.pool.backend import Backend
from usher.state.local import LocalBudget

if TYPE_CHECKING:
    from usher.balancing import BackendView

# The in-process retry budget, by the name it always had.
RetryBudget = LocalBudget

# A request's header fields, as the pool reads them (persistence's cookie and header, hooks):
# name and value bytes, the shape of the codec's `usher.http.events.Headers`, which the pool
# layer does not import.
Headers = list[tuple[bytes, bytes]]


class Selection:
    """The request-side context of one selection: who asks, and which backends were tried."""

    __slots__ = ("allowed", "client_ip", "gated", "key", "now", "panic", "preferred", "tried")

    def __init__(self, client_ip: str, now: float, key: bytes | None = None) -> None:
        self.client_ip = client_ip
        self.now = now
        self.key = key
        self.panic = False
        # Requests wait in another worker's queue: backends with a limit are theirs first.
        self.gated = False
        self.tried: list[Backend] = []
        # A hook's `select` (usher.hooks): the only backends allowed, and its order when it
        # overrides the algorithm's.
        self.allowed: frozenset[Backend] | None = None
        self.preferred: list[Backend] | None = None

    def narrow(self, backends: list[Backend], *, preferred: bool) -> None:
        self.allowed = frozenset(backends)
        self.preferred = backends if preferred else None

    def eligible(self, view: BackendView) -> bool:
        # An algorithm offers back the pool's own backends: the view is one of them.
        backend = cast(Backend, view)
        if backend in self.tried or not backend.has_room():
            return False
        if self.allowed is not None and backend not in self.allowed:
            return False
        if self.gated and backend.max_connections is not None:
            return False
        if self.panic:
            return backend.state == "enabled"
        return backend.ready(self.now)
