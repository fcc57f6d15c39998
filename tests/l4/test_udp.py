"""udp listeners through real sockets: sessions per client, replies to the right client,
affinity, expiry on the injected clock, the session cap, health."""

from __future__ import annotations

import asyncio
import resource
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tests.conftest import RunningBalancer
from tests.l4.test_tcp import wait_for
from usher.clock import ManualClock

StartBalancer = Callable[..., Awaitable[RunningBalancer]]


class Echo(asyncio.DatagramProtocol):
    """A UDP backend answering `<name>:<payload>`, remembering who sent what."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.peers: list[tuple[str, int]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.peers.append(addr)
        assert self.transport is not None
        self.transport.sendto(self.name.encode() + b":" + data, addr)


class Client(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)


def udp_config(*ports: int, **pool: Any) -> dict[str, Any]:
    return {
        "listeners": [{"name": "dns", "bind": "127.0.0.1:0", "protocol": "udp", "pool": "p"}],
        "pools": {"p": {"backends": [{"address": f"127.0.0.1:{p}"} for p in ports], **pool}},
    }


async def ask(client: Client, transport: Any, data: bytes) -> bytes:
    transport.sendto(data)
    return await asyncio.wait_for(client.inbox.get(), 5)


async def test_two_clients_two_backends_sessions_and_expiry(
    udp: Callable[..., Awaitable[Any]], balancer: StartBalancer
) -> None:
    a, b_ = Echo("A"), Echo("B")
    ta = await udp(a, local_addr=("127.0.0.1", 0))
    tb = await udp(b_, local_addr=("127.0.0.1", 0))
    ports = [t.get_extra_info("sockname")[1] for t in (ta, tb)]
    clock = ManualClock(100.0)
    b = await balancer(udp_config(*ports, timeouts={"idle": "30s"}), clock=clock)
    one, two = Client(), Client()
    t1 = await udp(one, remote_addr=("127.0.0.1", b.port))
    t2 = await udp(two, remote_addr=("127.0.0.1", b.port))
    # round robin: client one gets A, client two gets B; each keeps its backend.
    assert await ask(one, t1, b"q1") == b"A:q1"
    assert await ask(two, t2, b"q1") == b"B:q1"
    for i in range(3):
        assert await ask(one, t1, b"x%d" % i) == b"A:x%d" % i
        assert await ask(two, t2, b"y%d" % i) == b"B:y%d" % i
    listener = b.balancer.listeners["dns"]
    assert len(listener.sessions) == 2
    # Each backend saw one source: the session's own socket.
    assert len(set(a.peers)) == 1 and len(set(b_.peers)) == 1
    assert [be.active for be in b.pools["p"].backends] == [1, 1]
    # Idle sessions expire on the injected clock; a busy one does not.
    clock.advance(20)
    assert await ask(two, t2, b"keep") == b"B:keep"
    clock.advance(15)
    assert listener.sweep() == 1
    assert list(listener.sessions) == [t2.get_extra_info("sockname")]
    assert [be.active for be in b.pools["p"].backends] == [0, 1]
    # The expired client starts a new session (round robin moves on to A again).
    assert await ask(one, t1, b"again") in (b"A:again", b"B:again")
    assert len(listener.sessions) == 2
    await wait_for(lambda: "idle_timeout" in b.log.getvalue())
    assert " UDP dns idle_timeout in=" in b.log.getvalue()


async def test_affinity_ends_when_backend_goes_down(
    udp: Callable[..., Awaitable[Any]], balancer: StartBalancer
) -> None:
    a, b_ = Echo("A"), Echo("B")
    ta = await udp(a, local_addr=("127.0.0.1", 0))
    tb = await udp(b_, local_addr=("127.0.0.1", 0))
    ports = [t.get_extra_info("sockname")[1] for t in (ta, tb)]
    b = await balancer(udp_config(*ports))
    one = Client()
    t1 = await udp(one, remote_addr=("127.0.0.1", b.port))
    assert await ask(one, t1, b"1") == b"A:1"
    pool = b.pools["p"]
    pool.set_healthy(pool.backends[0], False, "test")
    assert await ask(one, t1, b"2") == b"B:2"
    pool.set_healthy(pool.backends[0], True, "test")
    assert await ask(one, t1, b"3") == b"B:3"  # B is still up: the session stays


async def test_max_sessions_drops_and_counts(
    udp: Callable[..., Awaitable[Any]], balancer: StartBalancer
) -> None:
    a = Echo("A")
    ta = await udp(a, local_addr=("127.0.0.1", 0))
    config = udp_config(ta.get_extra_info("sockname")[1])
    config["listeners"][0]["max_sessions"] = 1
    b = await balancer(config)
    one, two = Client(), Client()
    t1 = await udp(one, remote_addr=("127.0.0.1", b.port))
    t2 = await udp(two, remote_addr=("127.0.0.1", b.port))
    assert await ask(one, t1, b"1") == b"A:1"
    t2.sendto(b"dropped")
    await wait_for(lambda: b.balancer.metrics.rejected_total.get(("dns", "max_sessions")) == 1)
    assert two.inbox.empty()


async def test_each_worker_keeps_its_share_of_max_sessions(
    udp: Callable[..., Awaitable[Any]], balancer: StartBalancer
) -> None:
    """With N workers each allows max_sessions/N (rounded up), as max_connections does."""
    a = Echo("A")
    ta = await udp(a, local_addr=("127.0.0.1", 0))
    config = udp_config(ta.get_extra_info("sockname")[1])
    config["listeners"][0]["max_sessions"] = 3
    b = await balancer(config, workers=2)  # this worker's share: 2
    clients = [Client() for _ in range(3)]
    transports = [await udp(c, remote_addr=("127.0.0.1", b.port)) for c in clients]
    assert await ask(clients[0], transports[0], b"1") == b"A:1"
    assert await ask(clients[1], transports[1], b"2") == b"A:2"
    transports[2].sendto(b"dropped")
    await wait_for(lambda: b.balancer.metrics.rejected_total.get(("dns", "max_sessions")) == 1)
    assert clients[2].inbox.empty()


async def test_unreachable_backend_is_ejected_and_next_one_used(
    udp: Callable[..., Awaitable[Any]],
    balancer: StartBalancer,
    unused_udp_port: int,
) -> None:
    a = Echo("A")
    ta = await udp(a, local_addr=("127.0.0.1", 0))
    b = await balancer(udp_config(unused_udp_port, ta.get_extra_info("sockname")[1]))
    one = Client()
    t1 = await udp(one, remote_addr=("127.0.0.1", b.port))
    t1.sendto(b"lost")  # to the closed port: ICMP unreachable ejects it
    dead = b.pools["p"].backends[0]
    await wait_for(lambda: dead.failures_total == 1)
    assert await ask(one, t1, b"retry") == b"A:retry"


def test_udp_config_rules() -> None:
    import json

    from usher.config import parse_config
    from usher.errors import ConfigError

    config = udp_config(53, send_proxy_protocol="v2")
    config["listeners"][0]["accept_proxy_protocol"] = True
    with pytest.raises(ConfigError) as info:
        parse_config(json.dumps(config))
    assert "listeners[0].accept_proxy_protocol: not for protocol udp" in str(info.value)
    assert "pools.p.send_proxy_protocol: not for udp" in str(info.value)


async def test_running_out_of_descriptors_is_not_the_backends_fault(
    udp: Callable[..., Awaitable[Any]], balancer: StartBalancer
) -> None:
    # Every new client costs usher one socket; when none is left, the client is refused
    # (out_of_files) and the healthy backends stay in.
    ports = []
    for name in "ab":
        t = await udp(Echo(name), local_addr=("127.0.0.1", 0))
        ports.append(t.get_extra_info("sockname")[1])
    b = await balancer(udp_config(*ports))
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(60)]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(s.fileno() for s in clients)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (top + 20, hard))
        for s in clients:  # 60 clients, each from its own port: more than 20 sockets
            s.sendto(b"q", ("127.0.0.1", b.port))
            await asyncio.sleep(0.005)
        await asyncio.sleep(0.3)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for s in clients:
            s.close()
    pool = b.pools["p"]
    now = pool.clock.now()
    assert b.balancer.metrics.rejected_total[("dns", "out_of_files")] > 0
    assert "out_of_files" in b.log.getvalue()
    assert all(x.ready(now) and x.failures_total == 0 for x in pool.backends)
    one = Client()
    t1 = await udp(one, remote_addr=("127.0.0.1", b.port))
    assert (await ask(one, t1, b"again")).endswith(b":again")
