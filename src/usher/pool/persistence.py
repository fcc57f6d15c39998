"""Session persistence (`sticky`): keep a client on the backend it had, while that one is ready.

Persistence overrides the balancing algorithm only while the pinned backend is eligible; when it
is not (down, draining, disabled, full), the algorithm picks again and the pin moves.

- `cookie`: usher sets a cookie naming the backend by an opaque id (a keyed hash of pool and
  address: stable across workers and restarts, and it does not reveal the address).
- `source_ip` and `header`: a table remembers the backend of each client address or header
  value, forgetting entries unused for `ttl` and the least recent beyond `table_size`. With
  several workers the table is one for all, in shared memory (usher.state.shm), so a client
  whose next connection lands on another worker keeps its backend. With `cluster:` sharing
  `sticky`, it is one for every node, in Redis (usher.state.redis), by backend address.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from usher.clock import Clock
from usher.state import KeyTable, cluster
from usher.state.local import LocalKeyTable
from usher.state.redis import ClusterKeyTable
from usher.state.shm import SharedKeyTable

if TYPE_CHECKING:
    from usher.config import StickyCookie, StickyHeader, StickySourceIp
    from usher.pool.backend import Backend
    from usher.pool.selection import Headers
    from usher.state.shm import SharedState


def backend_token(pool: str, backend: Backend) -> bytes:
    return (
        hashlib.blake2b(backend.label.encode(), key=pool.encode()[:64], digest_size=8)
        .hexdigest()
        .encode()
    )


def request_cookie(headers: Headers, name: bytes) -> bytes | None:
    """The value of cookie `name` in a request's Cookie headers, if present."""
    for header, value in headers:
        if header.lower() != b"cookie":
            continue
        for pair in value.split(b";"):
            key, sep, val = pair.strip().partition(b"=")
            if sep and key == name:
                return val.strip(b'"')
    return None


def request_header(headers: Headers, name: bytes) -> bytes | None:
    for header, value in headers:
        if header.lower() == name:
            return value
    return None


class Persistence(ABC):
    """What the proxy asks of any persistence kind."""

    @abstractmethod
    def pinned(self, headers: Headers, client_ip: str) -> Backend | None:
        """The backend this request is pinned to, if any (ready or not: the caller checks)."""

    @abstractmethod
    def chosen(self, headers: Headers, client_ip: str, backend: Backend) -> bytes | None:
        """A backend was chosen for this request: remember it. Returns a Set-Cookie value to
        send with the answer, when the client must be told."""

    def claim(self, headers: Headers, client_ip: str, backend: Backend) -> Backend | None:
        """A request with no pin chose `backend`: pin it unless another worker or node pinned
        the same key meanwhile. Returns the backend pinned after the call (None when it is
        none this pool knows); the caller sends the request there while it is eligible."""
        return backend

    def rebuild(self, backends: Sequence[Backend]) -> None:
        """The pool's backend list changed."""


class CookiePersistence(Persistence):
    def __init__(self, pool: str, config: StickyCookie, backends: Sequence[Backend]) -> None:
        self.pool = pool
        self.name = config.cookie.encode("latin-1")
        attributes = [b"Path=" + config.path.encode("latin-1")]
        if config.max_age is not None:
            # Max-Age=0 would delete the cookie at once: under a second rounds up to one.
            attributes.append(b"Max-Age=%d" % max(1, round(config.max_age)))
        if config.http_only:
            attributes.append(b"HttpOnly")
        if config.secure:
            attributes.append(b"Secure")
        attributes.append(b"SameSite=Lax")
        self._suffix = b"; " + b"; ".join(attributes)
        self._by_token: dict[bytes, Backend] = {}
        self.rebuild(backends)

    def rebuild(self, backends: Sequence[Backend]) -> None:
        self._by_token = {backend_token(self.pool, b): b for b in backends}
        self._token = {id(b): t for t, b in self._by_token.items()}
        # The Set-Cookie value of each backend, made here rather than per answer.
        self._set_cookie = {
            key: self.name + b"=" + token + self._suffix for key, token in self._token.items()
        }

    def pinned(self, headers: Headers, client_ip: str) -> Backend | None:
        token = request_cookie(headers, self.name)
        return self._by_token.get(token) if token is not None else None

    def chosen(self, headers: Headers, client_ip: str, backend: Backend) -> bytes | None:
        key = id(backend)
        token = self._token.get(key)
        if token is None or request_cookie(headers, self.name) == token:
            return None
        return self._set_cookie[key]


class TablePersistence(Persistence):
    """A stick table keyed on the client address or a header value: in this process, or
    shared by the workers (`shared`), where it names backends by their row."""

    def __init__(
        self,
        config: StickySourceIp | StickyHeader,
        clock: Clock,
        backends: Sequence[Backend],
        shared: SharedState | None = None,
        pool: str = "",
    ) -> None:
        self.clock = clock
        self.ttl = config.ttl
        self.size = config.table_size
        self.header = config.header.lower().encode("latin-1") if config.type == "header" else None
        link = cluster("sticky")
        self._table: KeyTable[Backend]
        if link is not None:
            self._table = AddressTable(ClusterKeyTable(link, pool, config.table_size), backends)
        elif shared is not None:
            self._table = RowTable(SharedKeyTable(shared, f"st:{pool}:"), backends)
        else:
            self._table = LocalKeyTable(config.table_size)
        self._live: set[int] = {id(b) for b in backends}

    def rebuild(self, backends: Sequence[Backend]) -> None:
        self._live = {id(b) for b in backends}
        if isinstance(self._table, RowTable | AddressTable):
            self._table.rebuild(backends)

    def _key(self, headers: Headers, client_ip: str) -> str | None:
        if self.header is None:
            return client_ip
        value = request_header(headers, self.header)
        return None if value is None else value.decode("latin-1")

    def pinned(self, headers: Headers, client_ip: str) -> Backend | None:
        key = self._key(headers, client_ip)
        if key is None:
            return None
        backend = self._table.get(key, self.clock.now())
        if backend is None or id(backend) not in self._live:
            return None
        return backend

    def claim(self, headers: Headers, client_ip: str, backend: Backend) -> Backend | None:
        key = self._key(headers, client_ip)
        if key is None:
            return backend
        first = self._table.put_if_absent(key, backend, self.clock.now(), self.ttl)
        return first if id(first) in self._live else None

    def chosen(self, headers: Headers, client_ip: str, backend: Backend) -> bytes | None:
        key = self._key(headers, client_ip)
        if key is not None:
            self._table.put(key, backend, self.clock.now(), self.ttl)
        return None

    def __len__(self) -> int:
        table = self._table
        if isinstance(table, AddressTable):
            return len(table.addresses)
        return len(table) if isinstance(table, LocalKeyTable) else 0


class RowTable:
    """A shared key table seen as key -> Backend: it stores the backend's row in the shared
    counts, the same in every worker. A backend without a row (the table of rows is full) is
    not pinned."""

    __slots__ = ("_backends", "_by_row", "_rows")

    def __init__(self, rows: SharedKeyTable, backends: Sequence[Backend]) -> None:
        self._rows = rows
        self._backends: Sequence[Backend] = backends
        self._by_row: dict[int, Backend] = {}

    def rebuild(self, backends: Sequence[Backend]) -> None:
        self._backends = backends
        self._by_row = {}

    def get(self, key: str, now: float) -> Backend | None:
        row = self._rows.get(key, now)
        return None if row is None else self._backend(row)

    def _backend(self, row: int) -> Backend | None:
        backend = self._by_row.get(row)
        if backend is None or backend.shared is None or backend.shared.row != row:
            # Rows come with the control process's state, after the backends are built.
            self._by_row = {b.shared.row: b for b in self._backends if b.shared is not None}
            backend = self._by_row.get(row)
        return backend

    def put(self, key: str, value: Backend, now: float, ttl: float) -> None:
        if value.shared is not None:
            self._rows.put(key, value.shared.row, now, ttl)

    def put_if_absent(self, key: str, value: Backend, now: float, ttl: float) -> Backend:
        """The backend pinned first; `value` when it has no row (it is not pinned) or the
        pinned row is no backend this worker knows."""
        if value.shared is None:
            return value
        row = self._rows.put_if_absent(key, value.shared.row, now, ttl)
        return value if row == value.shared.row else self._backend(row) or value


class AddressTable:
    """A key table of the cluster (usher.state.redis) seen as key -> Backend: it stores the
    backend's address, the same on every node. An address this node does not know (its
    backends differ) is no pin.

    A key with no pin yet is placed by a weighted rendezvous hash over the enabled primary
    backends: a client whose second request reaches another node before the first node's pin
    does (pub/sub takes a round trip) lands on the same backend there too, and so do new
    clients while the store is down."""

    __slots__ = ("_by_label", "_placeable", "addresses")

    def __init__(self, addresses: ClusterKeyTable, backends: Sequence[Backend]) -> None:
        self.addresses = addresses
        self.rebuild(backends)

    def rebuild(self, backends: Sequence[Backend]) -> None:
        self._by_label = {b.label: b for b in backends}
        self._placeable = [b for b in backends if not b.backup and b.weight > 0]

    def get(self, key: str, now: float) -> Backend | None:
        label = self.addresses.get(key, now)
        if label is None:
            return self._place(key)
        return self._by_label.get(label)

    def _place(self, key: str) -> Backend | None:
        best: Backend | None = None
        best_score = -1.0
        for backend in self._placeable:
            if backend.state != "enabled":
                continue
            digest = hashlib.blake2b(f"{key}\x00{backend.label}".encode(), digest_size=8)
            uniform = (int.from_bytes(digest.digest(), "big") + 1) / (2**64 + 1)
            score = backend.weight / -math.log(uniform)
            if score > best_score:
                best, best_score = backend, score
        return best

    def put(self, key: str, value: Backend, now: float, ttl: float) -> None:
        self.addresses.put(key, value.label, now, ttl)

    def put_if_absent(self, key: str, value: Backend, now: float, ttl: float) -> Backend:
        label = self.addresses.put_if_absent(key, value.label, now, ttl)
        return self._by_label.get(label, value)


def build_persistence(
    pool: str,
    config: StickyCookie | StickySourceIp | StickyHeader | None,
    clock: Clock,
    backends: Sequence[Backend],
    shared: SharedState | None = None,
) -> Persistence | None:
    if config is None:
        return None
    if config.type == "cookie":
        return CookiePersistence(pool, config, backends)
    return TablePersistence(config, clock, backends, shared, pool)
