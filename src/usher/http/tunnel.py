"""The byte tunnel after a 101 (WebSocket and any upgrade), and its ending: half-closes passed
on, then both sockets closed.

A tunnel carries two directions. An EOF from one side ends its direction and is passed on to
the other side as a `write_eof`, which may still answer. Once both directions have ended, the
tunnel is over and both connections must be closed: neither transport closes itself after
its peer's EOF when `eof_received` kept it open, so two half-closed sockets would otherwise
stay open (and be counted as active connections) until shutdown. A side that cannot be
half-closed (TLS: its close_notify would end our reading too) ends the tunnel at the first EOF.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from usher.http.flow import BLOCK_UPGRADE
from usher.http.recording import record_exchange

if TYPE_CHECKING:
    from usher.http.exchange import Exchange


class TunnelEnds:
    """Which directions of one tunnel have ended."""

    __slots__ = ("backend_done", "client_done")

    def __init__(self) -> None:
        self.client_done = False  # the client sent its EOF
        self.backend_done = False  # the backend sent its EOF

    def ended(self, *, from_client: bool, receiver: asyncio.Transport | None) -> bool:
        """One side sent its EOF: pass it on to the other side's transport (`receiver`).
        Returns True when the tunnel is over and both connections should close."""
        if from_client:
            self.client_done = True
        else:
            self.backend_done = True
        if self.client_done and self.backend_done:
            return True
        if receiver is None or receiver.is_closing() or not receiver.can_write_eof():
            return True
        receiver.write_eof()
        return False


class Tunnel:
    """The byte tunnel of one exchange once its backend switched protocols: the client's bytes
    sent ahead of the 101, then both directions relayed until both ended or it went idle."""

    __slots__ = ("ends", "exchange", "tail")

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.tail: list[bytes] = []  # the client's bytes after the request, before the 101
        self.ends: TunnelEnds | None = None  # set when the tunnel starts

    def hold(self, data: bytes) -> None:
        self.tail.append(data)

    def start(self, upstream_tail: bytes) -> None:
        """The backend switched: pass on what each side sent ahead, then relay."""
        exchange = self.exchange
        client, link = exchange.client, exchange.link
        conn = link.conn
        assert conn is not None
        link.cancel_timers()
        if upstream_tail:
            client.write(upstream_tail)
        conn.tunnel = True
        client.tunnel = conn
        self.ends = TunnelEnds()
        for chunk in self.tail:
            conn.write(chunk)
        self.tail = []
        client.unblock(BLOCK_UPGRADE)
        exchange.upstream_time = exchange.attempt_time()
        record_exchange(exchange)
        link.arm_read_timeout()  # now the tunnel's idle limit (timeouts.tunnel)

    def backend_eof(self) -> None:
        """The backend ended its direction of the tunnel."""
        client = self.exchange.client
        ends = self.ends
        receiver = None if client.closed else client.transport
        if ends is None or ends.ended(from_client=False, receiver=receiver):
            self.end()

    def client_eof(self) -> None:
        """The client ended its direction of the tunnel."""
        conn = self.exchange.link.conn
        ends = self.ends
        receiver = None if conn is None or conn.closed else conn.transport
        if ends is None or ends.ended(from_client=True, receiver=receiver):
            self.end()

    def end(self) -> None:
        """The tunnel is over (both directions ended, or it went idle): close both sides."""
        exchange = self.exchange
        if exchange.finished:
            return
        exchange.client.close()
        conn = exchange.link.conn
        if conn is not None:
            conn.close()
        exchange.finish(True, close=True)


def keeps_half_open(transport: asyncio.BaseTransport) -> bool:
    """What `eof_received` returns for a tunnel's side: TLS transports cannot stay half open
    (asyncio warns and closes them anyway), plain ones can."""
    return transport.get_extra_info("sslcontext") is None
