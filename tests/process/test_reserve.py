"""Reservations: listener addresses the control process holds bound for its workers."""

from __future__ import annotations

import socket
from types import SimpleNamespace

import pytest

from usher.config import HostPort
from usher.process.reserve import Reservation, reserve, reserve_listener


def listener(protocol: str):  # type: ignore[no-untyped-def]
    """What reserve_listener reads of a listener: its config's protocol and address."""
    return SimpleNamespace(config=SimpleNamespace(protocol=protocol, bind=HostPort("127.0.0.1", 0)))


def test_port_0_becomes_one_port_a_worker_can_listen_on_too() -> None:
    held = reserve("127.0.0.1", 0)
    port = held.getsockname()[1]
    worker = socket.socket()
    worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        worker.bind(("127.0.0.1", port))
        worker.listen()
    finally:
        worker.close()
        held.close()


def test_a_port_in_use_is_found_at_once() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    try:
        with pytest.raises(OSError):
            reserve("127.0.0.1", taken.getsockname()[1])
    finally:
        taken.close()


async def test_a_dns_listener_holds_tcp_and_udp_on_one_port_and_lets_go_of_udp() -> None:
    reservation = await reserve_listener(listener("dns"))
    tcp, udp = reservation.sockets
    try:
        assert (tcp.type, udp.type) == (socket.SOCK_STREAM, socket.SOCK_DGRAM)
        assert tcp.getsockname() == udp.getsockname()
        reservation.release_datagram()
        assert udp.fileno() == -1 and tcp.fileno() != -1
    finally:
        reservation.close()
    assert tcp.fileno() == -1


async def test_a_udp_listener_holds_a_datagram_socket() -> None:
    reservation = await reserve_listener(listener("udp"))
    try:
        assert [s.type for s in reservation.sockets] == [socket.SOCK_DGRAM]
    finally:
        reservation.close()
    await Reservation().wait_closed()
