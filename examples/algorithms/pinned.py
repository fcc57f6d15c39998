"""A custom balancing algorithm: each client stays on "its" backend (weighted rendezvous hashing).

Every backend gets a score for the client's address, `-weight / ln(u)` where `u` in (0, 1) is a
stable hash of (client, backend); the highest score wins. Clients spread over the backends by
weight, and when a backend leaves or comes back only its own clients move (unlike `ip_hash`'s
table, which a change of the list reshuffles). Use it with:

    python_path: [.]                      # the directory holding this file, relative to the config
    pools:
      web:
        algorithm: "pinned:Pinned"
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from hashlib import blake2b

from usher.balancing import Algorithm, BackendView, SelectionContext

_SCALE = float(1 << 64)


class Pinned(Algorithm):
    """Candidates in order of their score for this client: the pinned backend first, then the
    backends its clients would move to if it were out."""

    def candidates(self, ctx: SelectionContext) -> Iterator[BackendView]:
        client = ctx.client_ip.encode()
        ranked = sorted(self.backends, key=lambda b: _score(client, b), reverse=True)
        return iter(ranked)


def _score(client: bytes, backend: BackendView) -> float:
    weight = backend.weight
    if weight <= 0:
        return -math.inf
    digest = blake2b(client + b"|" + backend.label.encode(), digest_size=8).digest()
    u = (int.from_bytes(digest, "little") + 0.5) / _SCALE  # in (0, 1), never 0 or 1
    return -weight / math.log(u)
