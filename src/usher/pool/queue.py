"""The wait queue: requests that wait for a backend at its `max_connections` (pool `queue`).

In one process the queue is this process's list of waiters. With several workers it is one
for all, in shared memory (usher.state.shm): first in, first out over every worker, a waiter
woken when it heads the queue and a backend has room (the worker's state loop calls `serve`).

A woken waiter holds the head (a grant) until its attempt has run, and every other request,
in any worker, queues behind it meanwhile: its own worker's new requests too, which the grant
would otherwise let through between the wake and the attempt (an event loop runs the reads
that came in before the attempt it scheduled), so that a newcomer took the slot and the woken
waiter went to the tail. In one process the same holds from the wake to the attempt: the woken
requests (`woken`) pass, the others queue behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from usher.pool.backend import Backend
from usher.state.shm import SharedQueue

if TYPE_CHECKING:
    from usher.pool.pool import Pool
    from usher.pool.selection import Selection

log = logging.getLogger("usher.health")


class WaitQueue:
    """The requests of one pool waiting for a free slot, each a callback to call then."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.waiters: deque[Callable[[], None]] = deque()
        self.shared: SharedQueue | None = self._shared_queue()
        self._tickets: dict[Callable[[], None], int] = {}
        # The selection of each waiter that gave one: the grant lets that request through.
        self._selections: dict[Callable[[], None], Selection] = {}
        self._granted: int | None = None
        self._holder: Selection | None = None  # the granted waiter's selection, if it gave one
        # In one process: the requests woken whose attempt has not run yet.
        self.woken: list[Selection] = []

    def configure(self) -> None:
        """The pool's config is new: a shared queue of another size (or none) is rebuilt."""
        wanted = self.pool.config.queue
        if self.shared is None or wanted is None or self.shared.size != wanted.size:
            self.shared = self._shared_queue()

    def gated(self, selection: Selection) -> bool:
        """Someone waits in the shared queue and `selection` is not the request this worker
        was granted the head for: it waits behind them. (A waiter that gave no selection is
        let through with any other request of its worker while it holds the head.)"""
        if self.shared is None:
            return bool(self.woken) and selection not in self.woken
        if self._granted is not None and (self._holder is None or self._holder is selection):
            return False
        return self.shared.waiting()

    def join(self, callback: Callable[[], None], selection: Selection | None = None) -> bool:
        """Queue `callback` for the next free slot; False when the queue is full or off.
        `selection` is the waiting request's: when woken, its attempt passes the gate."""
        options = self.pool.config.queue
        if options is None or len(self.waiters) >= options.size:
            return False
        shared, state = self.shared, self.pool.shared
        if shared is not None:
            assert state is not None
            ticket = shared.join(state.worker)
            if ticket is None:
                return False
            self._tickets[callback] = ticket
        if selection is not None:
            self._selections[callback] = selection
        self.waiters.append(callback)
        return True

    def leave(self, callback: Callable[[], None]) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(callback)
        ticket = self._tickets.pop(callback, None)
        self._selections.pop(callback, None)
        state = self.pool.shared
        if ticket is not None and self.shared is not None and state is not None:
            self.shared.leave(ticket, state.worker)

    def wake(self, backend: Backend) -> None:
        """`backend` may have a free slot: the first waiter tries (with a shared queue, when
        it heads it; soon, not inside the finish of the request that freed it)."""
        if self.shared is not None:
            asyncio.get_running_loop().call_soon(self.serve)
        elif backend.has_room():
            self._wake_first()

    def _wake_first(self) -> None:
        """In one process: wake the first waiter. Until its attempt has run (the callback
        schedules it on the event loop), the requests that come in queue behind it."""
        callback = self.waiters.popleft()
        selection = self._selections.pop(callback, None)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the simulator's own loop: it runs nothing in between
            selection = None
        if selection is not None:
            self.woken.append(selection)
        callback()
        if selection is not None:
            loop.call_soon(self._woken_done, selection)

    def _woken_done(self, selection: Selection) -> None:
        """A woken request has made its attempt: the next waiter may go if there is room
        (a newcomer queued behind it while a slot was free, or its client had left)."""
        self.woken.remove(selection)
        pool = self.pool
        now = pool.clock.now()
        if self.waiters and any(b.ready(now) and b.has_room() for b in pool.backends):
            self._wake_first()

    def serve(self) -> None:
        """Wake this worker's first waiter when it heads the shared queue and a backend has
        room. It holds the head (a grant) until its attempt has run: no waiter of another
        worker passes it, nor a new request, meanwhile."""
        pool = self.pool
        queue, state = self.shared, pool.shared
        if queue is None or state is None or not self.waiters or self._granted is not None:
            return
        now = pool.clock.now()
        if not any(b.ready(now) and b.has_room() for b in pool.backends):
            return
        ticket = queue.grant(state.worker)
        if ticket is None:
            return
        callback = self.waiters.popleft()
        self._tickets.pop(callback, None)
        self._granted = ticket
        self._holder = self._selections.pop(callback, None)
        callback()  # schedules the attempt (call_soon), which runs before the release below
        asyncio.get_running_loop().call_soon(self._release_grant, ticket)

    def _release_grant(self, ticket: int) -> None:
        self._granted = None
        self._holder = None
        state = self.pool.shared
        if self.shared is not None and state is not None:
            self.shared.done(ticket, state.worker)
        self.serve()

    def _shared_queue(self) -> SharedQueue | None:
        pool = self.pool
        if pool.shared is None or pool.config.queue is None:
            return None
        index = pool.shared.queue_index(pool.name)
        if index is None:
            log.warning("pool %s: no shared queue left; its queue is this worker's", pool.name)
            return None
        return SharedQueue(pool.shared, index, pool.config.queue.size)
