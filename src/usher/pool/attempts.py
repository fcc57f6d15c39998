"""One attempts policy for HTTP requests and L4 connections: which backend to try next, whether
a failed try may be retried on another, and what the client is told when none is left.

The budget is the pool's `retries.attempts` (plus the first try) and its retry budget; a try
may be retried when its error says so (`retry_safe`) and nothing of the request reached the
backend. The status usher answers for a failed try is its error's `status_hint` (refused or
reset: 502, timed out: 504), decided here only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from usher.errors import UpstreamError
from usher.shortage import local_reason, report

if TYPE_CHECKING:
    import asyncio

    from usher.metrics import Metrics
    from usher.pool.backend import Backend
    from usher.pool.pool import Pool
    from usher.pool.selection import Headers, Selection

# The methods a request may be sent again with, to another backend (RFC 9110 §9.2.2).
IDEMPOTENT: Final = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


def may_replay(method: bytes, has_body: bool) -> bool:
    """Whether a request may be sent again after a backend has seen it: idempotent, no body."""
    return method in IDEMPOTENT and not has_body


def answer_for(error: Exception | None) -> tuple[int, str]:
    """The status and text for a try that failed with `error` (anything not an UpstreamError
    is the backend's fault too: a 502)."""
    kind = type(error) if isinstance(error, UpstreamError) else UpstreamError
    return kind.status_hint, kind.client_detail


class Attempts:
    """The tries of one request (or connection) at the backends of one pool."""

    __slots__ = (
        "_on_free",
        "_on_queue_timeout",
        "_queue_timer",
        "backend",
        "last_error",
        "left",
        "metrics",
        "pool",
        "retried_status",
        "selection",
        "started",
    )

    def __init__(self, pool: Pool, selection: Selection, metrics: Metrics) -> None:
        self.pool = pool
        self.selection = selection
        self.metrics = metrics
        self.left = pool.config.retries.attempts + 1
        self.backend: Backend | None = None  # the one being tried, until its try is settled
        self.started = 0.0  # when the current try began, on the pool's (injected) clock
        self.last_error: Exception | None = None
        self.retried_status = 0  # the status of an answer dropped for a retry
        self._queue_timer: asyncio.TimerHandle | None = None
        self._on_free: Callable[[], None] | None = None
        self._on_queue_timeout: Callable[[], None] | None = None

    def next(self, headers: Headers) -> Backend | None:
        """Start a try at the next backend (None: none is left or ready)."""
        pool, selection = self.pool, self.selection
        selection.now = pool.clock.now()
        backend = pool.choose(selection, headers) if self.left > 0 else None
        if backend is None:
            return None
        self.left -= 1
        selection.tried.append(backend)
        self.backend = backend
        pool.on_start(backend)
        self.started = selection.now
        return backend

    def elapsed(self) -> float:
        """Seconds since the current try began."""
        return self.pool.clock.now() - self.started

    def failed(self, exc: Exception, *, replayable: bool = True, detail: str | None = None) -> bool:
        """The current try failed before any answer; True when the caller may try `next`
        (counted as a retry when one is left), False when the request must be answered."""
        backend = self.backend
        assert backend is not None
        self.backend = None
        pool = self.pool
        pool.on_finish(backend, self.elapsed(), False, str(exc) if detail is None else detail)
        self.last_error = exc
        if isinstance(exc, UpstreamError) and exc.retry_safe and replayable:
            if self.left > 0:
                self.metrics.retry(pool.name)
            return True
        return False

    def out_of_resources(self, exc: BaseException, where: str) -> str | None:
        """When `exc` says usher itself ran short (descriptors, memory), the reason: the try
        is dropped without blaming the backend (nor would another fare better)."""
        reason = local_reason(exc)
        if reason is None:
            return None
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.pool.on_abandon(backend)
        report(where, reason, exc)
        return reason

    def retry_status(self, status: int, replayable: bool) -> bool:
        """An answer came with `status`: True when it is dropped for a try at another backend
        (the pool retries that status, a try and the retry budget are left)."""
        pool, backend = self.pool, self.backend
        if backend is None:
            return False
        pool.record_status(backend, status)
        if (
            status not in pool.config.retries.on
            or self.left <= 0
            or not replayable
            or not pool.retry_budget.withdraw()
        ):
            return False
        self.backend = None
        pool.on_finish(backend, self.elapsed(), True)
        self.last_error = UpstreamError(f"status {status}")
        self.retried_status = status
        self.metrics.retry(pool.name)
        return True

    def finish(self, ok: bool, latency: float | None = None) -> None:
        """The current try is over (`latency`: its own measure, else the time since it began)."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.pool.on_finish(backend, self.elapsed() if latency is None else latency, ok)

    def abandon(self) -> None:
        """The client left before the answer: this says nothing of the backend."""
        backend = self.backend
        if backend is not None:
            self.backend = None
            self.pool.on_abandon(backend)

    # Giving up, or waiting for room

    def may_wait(self) -> bool:
        """No backend was ready, none failed: worth waiting when one would be, given room."""
        return (
            not self.retried_status
            and self.last_error is None
            and self.left > 0
            and self.pool.saturated(self.selection)
        )

    def verdict(self) -> tuple[int, str]:
        """The answer when no try is left: the status retried away, 503, or the last error's."""
        if self.retried_status:
            # The answer that was retried is gone; say what it was.
            return self.retried_status, f"the backends answered {self.retried_status}"
        if self.last_error is None:
            return 503, "no backend is available"
        return answer_for(self.last_error)

    def wait(
        self,
        loop: asyncio.AbstractEventLoop,
        on_free: Callable[[], None],
        on_timeout: Callable[[], None],
    ) -> bool:
        """Wait in the pool's queue for a backend under its max_connections; `on_free` runs
        when one has room, `on_timeout` after `queue.timeout`. False when the queue is full
        or off."""
        pool = self.pool
        if not pool.wait(self._free, self.selection):
            return False
        assert pool.config.queue is not None
        self._on_free, self._on_queue_timeout = on_free, on_timeout
        self._queue_timer = loop.call_later(pool.config.queue.timeout, self._queue_timed_out)
        return True

    def stop_waiting(self) -> None:
        """Leave the queue (the client left, or the request ended otherwise)."""
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
            self.pool.unwait(self._free)

    def _free(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None
        if self._on_free is not None:
            self._on_free()

    def _queue_timed_out(self) -> None:
        self._queue_timer = None
        self.pool.unwait(self._free)
        if self._on_queue_timeout is not None:
            self._on_queue_timeout()
