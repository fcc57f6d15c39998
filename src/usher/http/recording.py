"""What one exchange leaves behind: its count in the metrics and its access-log line."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from usher.logs import AccessRecord

if TYPE_CHECKING:
    from usher.http.exchange import Exchange


def record_exchange(exchange: Exchange) -> None:
    """Count the request in the metrics and write its access-log line."""
    listener = exchange.client.listener
    duration = listener.clock.now() - exchange.t_start
    pool = exchange.pool.name if exchange.pool is not None else None
    attempts = exchange.attempts
    tried = attempts.selection.tried if attempts is not None else None
    backend = tried[-1].label if tried else None
    metrics = listener.metrics
    metrics.request(listener.name, pool, backend, exchange.status, duration)
    metrics.bytes(listener.name, "out", exchange.bytes_out)
    access_log = listener.access_log
    hooks = exchange.hook_run  # on_log (usher.hooks) sees the record, logged or not
    if hooks is not None and not hooks.logs:
        hooks = None
    if not access_log.enabled and hooks is None:
        return
    record = exchange.record
    if record is None:  # logging was switched on during this request
        request = exchange.request
        record = AccessRecord(
            time.time() - duration,
            exchange.client.client_ip,
            request.method,
            request.target,
            listener.name,
        )
    record.finish(
        exchange.status,
        exchange.bytes_out,
        pool,
        backend,
        duration,
        upstream_time=exchange.upstream_time,
    )
    if access_log.enabled:
        access_log.write(record)
    if hooks is not None:
        hooks.record(record)
