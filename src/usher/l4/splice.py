"""Zero-copy relaying on Linux: each direction moves bytes socket -> pipe -> socket with
splice(2), so they never enter Python. Raw non-blocking sockets, driven by the loop's
add_reader/add_writer.

Per direction: read while the pipe is empty; when the destination is full (EAGAIN), stop
reading the source and wait for the destination to be writable (back-pressure). An EOF from the
source, once the pipe is drained, shuts the destination's write side down (half-close); the
connection closes when both directions are done, or at once on an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Final

from usher.l4.relay import ABORTED, BACKEND_RESET, CLIENT_RESET, IDLE, OK

# A bigger pipe moves more per system call; the kernel may refuse (pipe-max-size): then 64 KiB.
PIPE_SIZE: Final = 1024 * 1024
_FLAGS: Final = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)


def available() -> bool:
    return hasattr(os, "splice")


class _Direction:
    __slots__ = (
        "dst",
        "dst_sock",
        "eof",
        "finished",
        "from_client",
        "pending",
        "pipe_r",
        "pipe_w",
        "relay",
        "size",
        "src",
        "waiting",
    )

    def __init__(
        self, relay: SpliceRelay, src: socket.socket, dst: socket.socket, from_client: bool
    ) -> None:
        self.relay = relay
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.from_client = from_client
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self.size = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.pending = 0  # bytes in the pipe
        self.eof = False
        self.finished = False
        self.waiting = False  # for dst to be writable

    def start(self) -> None:
        self.relay.loop.add_reader(self.src, self.readable)

    def readable(self) -> None:
        try:
            n = os.splice(self.src, self.pipe_w, self.size - self.pending, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError:
            self.relay.fail(self.from_client)
            return
        relay = self.relay
        if n == 0:
            relay.loop.remove_reader(self.src)
            self.eof = True
        else:
            self.pending += n
            relay.moved(self.from_client, n)
        self.flush()

    def writable(self) -> None:
        self.flush()

    def flush(self) -> None:
        relay = self.relay
        while self.pending:
            try:
                n = os.splice(self.pipe_r, self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                if not self.waiting:
                    self.waiting = True
                    if not self.eof:
                        relay.loop.remove_reader(self.src)
                    relay.loop.add_writer(self.dst, self.writable)
                return
            except OSError:
                relay.fail(not self.from_client)
                return
            self.pending -= n
        if self.waiting:
            self.waiting = False
            relay.loop.remove_writer(self.dst)
            if not self.eof:
                relay.loop.add_reader(self.src, self.readable)
        if self.eof and not self.finished:
            self.finished = True
            with contextlib.suppress(OSError):
                self.dst_sock.shutdown(socket.SHUT_WR)
            relay.direction_done()

    def stop(self) -> None:
        loop = self.relay.loop
        loop.remove_reader(self.src)
        if self.waiting:
            loop.remove_writer(self.dst)
        for fd in (self.pipe_r, self.pipe_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class SpliceRelay:
    """Relays between two connected sockets (it owns and closes them); `on_done(result)`
    once at the end."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        client: socket.socket,
        backend: socket.socket,
        idle: float,
        on_bytes: Callable[[bool, int], None],
        on_done: Callable[[str], None],
    ) -> None:
        self.loop = loop
        self.client = client
        self.backend = backend
        self.idle = idle
        self.on_bytes = on_bytes
        self.on_done = on_done
        self.result: str | None = None
        self.last_activity = loop.time()
        self._done = False
        self._timer: asyncio.TimerHandle | None = None
        self._up = _Direction(self, client, backend, True)
        try:
            self._down = _Direction(self, backend, client, False)
        except OSError:
            self._up.stop()
            raise

    def start(self) -> None:
        self._up.start()
        self._down.start()
        self._timer = self.loop.call_later(self.idle, self._check_idle)

    def moved(self, from_client: bool, n: int) -> None:
        self.last_activity = self.loop.time()
        self.on_bytes(from_client, n)

    def direction_done(self) -> None:
        if self._up.finished and self._down.finished:
            self._close(OK)

    def fail(self, client_side: bool) -> None:
        self._close(CLIENT_RESET if client_side else BACKEND_RESET)

    def abort(self) -> None:
        self._close(ABORTED)

    def _check_idle(self) -> None:
        self._timer = None
        quiet = self.loop.time() - self.last_activity
        if quiet >= self.idle:
            self._close(IDLE)
        else:
            self._timer = self.loop.call_later(self.idle - quiet, self._check_idle)

    def _close(self, result: str) -> None:
        if self._done:
            return
        self._done = True
        self.result = result
        if self._timer is not None:
            self._timer.cancel()
        self._up.stop()
        self._down.stop()
        self.client.close()
        self.backend.close()
        self.on_done(result)
