"""The socket side of a client connection, apart from the requests on it: writing, closing
(lingering while the client may still be sending, a reset when it does not take our bytes in
time), pausing reading for the reasons in `http/flow.py`, and the client's read and send
deadlines on the balancer's clock. `ClientConnection` (http/downstream.py) runs the requests
over it and says what a quiet client means.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from usher.l4.accept import close_within, reset
from usher.timers import Deadline, wakeups_for

if TYPE_CHECKING:
    from usher.http.listener import HttpListener

# How long a connection closed mid-request keeps reading (and dropping) the client's bytes.
LINGER = 2.0


class ClientSocket(asyncio.Protocol):
    __slots__ = (
        "_blocks",
        "_closing",
        "_read_wait",
        "_send_wait",
        "closed",
        "listener",
        "loop",
        "refused",
        "transport",
    )

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport = None  # type: ignore[assignment]  # set on connect
        self.closed = False
        self.refused = False  # what the client sends from now on is dropped
        self._blocks = 0  # the reasons to stop reading (flow.BLOCK_*)
        # The client's wait for its next bytes (head, body, next request) and for taking ours,
        # on the balancer's clock; each made when first armed (most clients never stop reading).
        self._read_wait: Deadline | None = None
        self._send_wait: Deadline | None = None
        self._closing: asyncio.TimerHandle | None = None  # lingering or a reset at the end

    # What the connection on top decides

    def _may_still_send(self) -> bool:
        """Whether the client may be sending still (then a close lingers)."""
        return self.refused

    def _read_timed_out(self) -> None:
        """The client sent nothing for the read limit armed last."""
        self.close()

    def _reading_resumed(self) -> None:
        """Reading resumed once no reason to stop was left."""

    # Output

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._cancel_timers()
            transport = self.transport
            if self._may_still_send() and transport.can_write_eof():
                self._linger(transport)
            else:
                self._close_transport()

    def _close_transport(self) -> None:
        self._closing = close_within(self.loop, self.transport, self.listener.timeouts.send)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close a connection the client may still be sending on, as nginx's lingering close:
        closing at once would answer its next bytes with a reset, which can destroy our answer
        before the client reads it. Send our FIN, read and drop what comes, close soon."""
        self.refused = True  # data_received drops everything from now on
        transport.write_eof()
        if self._blocks:
            self._blocks = 0
            transport.resume_reading()
        self._closing = self.loop.call_later(LINGER, self._close_transport)

    def abort(self, *, with_reset: bool = False) -> None:
        """Cut the connection now; `with_reset` also drops what the kernel still holds for a
        client that stopped reading."""
        self.closed = True
        self._cancel_timers()
        if with_reset:
            reset(self.transport)
        else:
            self.transport.abort()

    # Reading control

    def block(self, reason: int) -> None:
        if not self._blocks and not self.closed:
            self.transport.pause_reading()
        self._blocks |= reason

    def unblock(self, reason: int) -> None:
        if self._blocks & reason:
            self._blocks &= ~reason
            if not self._blocks and not self.closed:
                self.transport.resume_reading()
                self._reading_resumed()

    @property
    def reading_blocked(self) -> bool:
        return bool(self._blocks)

    # Deadlines

    def arm_read_timer(self, delay: float) -> None:
        """The client has `delay` seconds from now to send its next bytes."""
        wait = self._read_wait
        if wait is None:
            wait = self._read_wait = self.deadline(self._read_timed_out)
        wait.arm(delay)

    def disarm_read_timer(self) -> None:
        if self._read_wait is not None:
            self._read_wait.disarm()

    def arm_send_timer(self) -> None:
        """The client stopped taking our bytes: it has the send timeout to start again."""
        wait = self._send_wait
        if wait is None:
            wait = self._send_wait = self.deadline(self._send_timed_out)
        wait.arm(self.listener.timeouts.send)

    def cancel_send_timer(self) -> None:
        if self._send_wait is not None:
            self._send_wait.cancel()

    def deadline(self, on_expiry: Callable[[], None]) -> Deadline:
        """A deadline on the balancer's clock, woken by this connection's loop (or by a manual
        clock): the client's waits, and the backend's for the exchange it carries."""
        clock = self.listener.clock
        return Deadline(clock, wakeups_for(clock, self.loop), on_expiry)

    def _cancel_timers(self) -> None:
        if self._read_wait is not None:
            self._read_wait.cancel()
        if self._send_wait is not None:
            self._send_wait.cancel()
        if self._closing is not None:
            self._closing.cancel()
            self._closing = None

    def forget_timers(self) -> None:
        """The connection is gone: cancel the deadlines and let go of them (each holds a
        bound method of this connection: a cycle)."""
        self._cancel_timers()
        self._read_wait = self._send_wait = None

    def _send_timed_out(self) -> None:
        self.abort(with_reset=True)  # the client stopped reading; nothing more can be said to it
