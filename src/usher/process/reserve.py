"""Listening addresses held bound, never listening (SO_REUSEPORT), by the control process of
several workers: port 0 becomes one real port for all of them, a port in use is found before
any worker starts, and the kernel spreads connections over the workers' own sockets only.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

from usher import handover
from usher.dns.server import bind_pair
from usher.listeners import AnyListener


class Reservation:
    """A listener address bound, never listening: stands for the workers' sockets in the
    control process's Balancer (it is closed where a served listener would be)."""

    def __init__(self, *socks: socket.socket) -> None:
        self.socks = socks  # a dns listener has two: TCP, then UDP on the same port

    def release_datagram(self) -> None:
        """A bound UDP socket in a SO_REUSEPORT group takes its share of the datagrams (a TCP
        socket that never listens takes no connection), so once the workers hold a UDP port,
        the control process lets go of its own."""
        for sock in self.socks:
            if sock.type == socket.SOCK_DGRAM:
                sock.close()

    @property
    def sockets(self) -> Sequence[socket.socket]:
        return list(self.socks)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()

    async def wait_closed(self) -> None:
        return None


async def reserve_listener(listener: AnyListener) -> Reservation:
    """The address of `listener`, held for the workers (raises OSError when it is taken)."""
    lc = listener.config
    host = lc.bind.host
    if lc.protocol == "dns":
        return Reservation(
            *bind_pair(
                lc.bind.port,
                lambda port: reserve(host, port),
                lambda port: reserve(host, port, datagram=True),
            )
        )
    return Reservation(reserve(host, lc.bind.port, datagram=lc.protocol == "udp"))


def reserve(host: str, port: int, *, datagram: bool = False) -> socket.socket:
    """Bind the address the workers will share (a UDP listener's as a datagram socket, so
    that port 0 picks a port free for UDP and a UDP port in use is caught here)."""
    kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
    if port != 0:
        # After an upgrade, the workers' sockets came over: a new UDP socket would take a share
        # of the datagrams until released, so the reservation is one of theirs.
        inherited = handover.copy_of(handover.key_for(host, port, kind))
        if inherited is not None:
            return inherited
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock
