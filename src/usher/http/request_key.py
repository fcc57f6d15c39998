"""The key `consistent_hash` hashes a request on (pool `hash.key`), taken from the request here
so that the pool and the algorithms see bytes, not HTTP types."""

from __future__ import annotations

from typing import TYPE_CHECKING

from usher.pool.persistence import request_cookie, request_header

if TYPE_CHECKING:
    from usher.config import PoolConfig
    from usher.http.codec import Request


def hash_key(config: PoolConfig, request: Request, client_ip: bytes) -> bytes | None:
    """The request's key for a pool balanced by `consistent_hash`; None for any other
    algorithm, or when the request has no such key (the header or cookie is absent)."""
    if config.algorithm != "consistent_hash":
        return None
    options = config.hash
    if options.key == "source_ip":
        return client_ip
    if options.key == "path":
        return request.target.partition(b"?")[0]
    name = (options.name or "").encode("latin-1")
    if options.key == "cookie":
        return request_cookie(request.headers, name)
    return request_header(request.headers, name.lower())
