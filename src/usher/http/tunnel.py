"""The ending of an upgraded (101) connection: half-closes passed on, then both sockets closed.

A tunnel carries two directions. An EOF from one side ends its direction and is passed on to
the other side as a `write_eof`, which may still answer. Once both directions have ended, the
tunnel is over and both connections must be closed: neither transport closes itself after
its peer's EOF when `eof_received` kept it open, so two half-closed sockets would otherwise
stay open (and be counted as active connections) until shutdown. A side that cannot be
half-closed (TLS: its close_notify would end our reading too) ends the tunnel at the first EOF.
"""

from __future__ import annotations

import asyncio


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


def keeps_half_open(transport: asyncio.BaseTransport) -> bool:
    """What `eof_received` returns for a tunnel's side: TLS transports cannot stay half open
    (asyncio warns and closes them anyway), plain ones can."""
    return transport.get_extra_info("sslcontext") is None
