"""`dns` listeners: the engine (usher.dns.answer) served over UDP and TCP on one address.

UDP answers go through response-rate limiting; TCP (length-prefixed messages, RFC 7766, several
per connection) does not, since a TCP client cannot forge its address. A reload gives the
listener new records (a new engine) and keeps its sockets.
"""

from __future__ import annotations

import asyncio
import errno
import random
import socket
import struct
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from usher.acl import IpList
from usher.dns.answer import Engine, Outcome
from usher.dns.policies import Candidate
from usher.dns.rrl import RateLimiter
from usher.l4.accept import listening_socket
from usher.logs import AccessLog, QueryRecord
from usher.metrics import Metrics

if TYPE_CHECKING:
    from collections.abc import Mapping

    from usher.clock import Clock
    from usher.config import DnsSettings
    from usher.config import Listener as ListenerConfig
    from usher.pool import Pool
    from usher.routing import Router

# Tries at finding a port free for both UDP and TCP when the config says port 0.
PORT_TRIES: Final = 20
# Bytes a TCP client may have us hold unanswered: one largest message and its length prefix.
TCP_BUFFER_LIMIT: Final = 65535 + 2


def bind_pair(
    port: int, open_tcp: Callable[[int], socket.socket], open_udp: Callable[[int], socket.socket]
) -> tuple[socket.socket, socket.socket]:
    """A TCP and a UDP socket on the same port; port 0 picks one free for both."""
    for _ in range(PORT_TRIES):
        tcp = open_tcp(port)
        try:
            return tcp, open_udp(tcp.getsockname()[1])
        except OSError as exc:
            tcp.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP")


class DnsListener:
    """The runtime side of one `dns` listener."""

    def __init__(
        self,
        config: ListenerConfig,
        router: Router,
        *,
        clock: Clock,
        access_log: AccessLog,
        metrics: Metrics | None = None,
        workers: int = 1,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock
        self.access_log = access_log
        self.metrics = metrics or Metrics()
        self.rng = rng or random.Random()
        self.connections: set[_TcpClient] = set()
        self.transport: asyncio.DatagramTransport | None = None
        self.draining = False
        self.apply(config, router)

    def apply(self, config: ListenerConfig, router: Router) -> None:
        assert config.dns is not None  # the config rules make sure
        self.config = config
        self.name = config.name
        self.settings: DnsSettings = config.dns
        self.pools: Mapping[str, Pool] = router.pools
        self.draining = False
        self.ips = IpList.build(config.limits.allow, config.limits.deny)
        # The SOA serial changes with each (re)load: the records may have changed.
        self.engine = Engine(self.settings, self.sites, rng=self.rng, serial=int(time.time()))
        limit = self.settings.rate_limit
        self.rrl = (
            RateLimiter(limit.responses_per_second, limit.burst, limit.slip)
            if limit is not None
            else None
        )
        self.idle_timeout = config.timeouts.idle

    def sites(self, pool_name: str) -> Sequence[Candidate]:
        """A pool's backends as they are now (what the engine answers from)."""
        pool = self.pools.get(pool_name)
        if pool is None:
            return ()
        now = self.clock.now()
        return [
            Candidate(pool_name, b.host, b.port, b.weight, b.ready(now), b.check_rtt)
            for b in pool.backends
        ]

    def drain(self) -> None:
        self.draining = True

    async def bind(self, reuse_port: bool) -> DnsServer:
        host = self.config.bind.host

        def tcp(port: int) -> socket.socket:
            return listening_socket(host, port, reuse_port=reuse_port)

        def udp(port: int) -> socket.socket:
            return listening_socket(host, port, kind=socket.SOCK_DGRAM, reuse_port=reuse_port)

        tcp_sock, udp_sock = bind_pair(self.config.bind.port, tcp, udp)
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpFront(self), sock=udp_sock
            )
        except BaseException:
            tcp_sock.close()
            udp_sock.close()
            raise
        server = await loop.create_server(lambda: _TcpClient(self), sock=tcp_sock)
        return DnsServer(server, transport)

    # Queries

    def query(self, wire: bytes, client: tuple[str, int], *, tcp: bool) -> bytes | None:
        """The bytes to send back for one query, or None to send nothing."""
        started = time.perf_counter()
        ip = client[0]
        if self.ips is not None and not self.ips.permits(ip):
            self.metrics.rejected(self.name, "ip_denied")
            return None
        verdict = "answer"
        if not tcp and self.rrl is not None:
            verdict = self.rrl.check(ip, self.clock.now())
            if verdict == "drop":  # not logged either: a flood must not flood the log
                self.metrics.dns_rate_limited(self.name, "dropped")
                return None
        outcome = self.engine.answer(wire, ip, tcp=tcp)
        if outcome is None:
            self.metrics.rejected(self.name, "dns_unanswerable")
            return None
        data = outcome.wire
        if verdict == "slip":
            self.metrics.dns_rate_limited(self.name, "slipped")
            if outcome.message is not None:
                data = self.engine.truncated(outcome)
                outcome.answers = []
        self._count(outcome, client, "tcp" if tcp else "udp", started)
        return data

    def _count(self, outcome: Outcome, client: tuple[str, int], transport: str, at: float) -> None:
        self.metrics.dns_query(
            self.name, outcome.record, outcome.policy, outcome.rcode, outcome.answers
        )
        if not self.access_log.enabled:
            return
        host = f"[{client[0]}]" if ":" in client[0] else client[0]
        record = QueryRecord(f"{host}:{client[1]}", self.name, transport)
        record.qname, record.qtype = outcome.qname, outcome.qtype
        record.rcode = outcome.rcode + (" TC" if outcome.truncated else "")
        record.answers = [address for _, address in outcome.answers]
        record.duration = time.perf_counter() - at
        self.access_log.write(record)

    # Views

    def describe(self) -> dict[str, Any]:
        """The records and the sites they point at, with their backends' state now."""
        settings = self.settings
        records = []
        for record in self.engine.records.values():
            config = record.config
            sites = []
            for pool in record.all_pools():
                sites.append(
                    {
                        "pool": pool,
                        "backends": [
                            {
                                "address": c.label,
                                "healthy": c.healthy,
                                "weight": c.weight,
                                "rtt_ms": None if c.rtt is None else round(c.rtt * 1000, 3),
                            }
                            for c in self.sites(pool)
                        ],
                    }
                )
            records.append(
                {
                    "name": config.name,
                    "policy": config.policy,
                    "ttl": config.ttl if config.ttl is not None else settings.ttl,
                    "answers": config.answers,
                    "when_all_down": config.when_all_down,
                    "geo": [{"clients": list(g.clients), "pool": g.pool} for g in config.geo],
                    "sites": sites,
                }
            )
        return {"listener": self.name, "zones": list(settings.zones), "records": records}


class DnsServer:
    """Both sockets of a dns listener, with what the balancer uses of an `asyncio.Server`."""

    def __init__(self, server: asyncio.Server, transport: asyncio.DatagramTransport) -> None:
        self.server = server
        self.transport = transport

    @property
    def sockets(self) -> Sequence[Any]:
        return (*self.server.sockets, self.transport.get_extra_info("socket"))

    def close(self) -> None:
        self.server.close()
        self.transport.close()

    async def wait_closed(self) -> None:
        await self.server.wait_closed()


class _UdpFront(asyncio.DatagramProtocol):
    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.listener.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        listener = self.listener
        client = (str(addr[0]), int(addr[1]))
        listener.metrics.bytes(listener.name, "in", len(data))
        reply = listener.query(data, client, tcp=False)
        transport = listener.transport
        if reply is not None and transport is not None and not transport.is_closing():
            transport.sendto(reply, addr)
            listener.metrics.bytes(listener.name, "out", len(reply))

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about an answer to a client that went away: nothing to do


class _TcpClient(asyncio.Protocol):
    """One TCP client: length-prefixed queries, answered in order; closed when idle."""

    def __init__(self, listener: DnsListener) -> None:
        self.listener = listener
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.peer: tuple[str, int] = ("", 0)
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        listener = self.listener
        if listener.draining:
            transport.close()
            return
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        listener.connections.add(self)
        self._arm()

    def _arm(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        loop = asyncio.get_running_loop()
        self._idle = loop.call_later(self.listener.idle_timeout, self.abort)

    def data_received(self, data: bytes) -> None:
        listener = self.listener
        listener.metrics.bytes(listener.name, "in", len(data))
        self.buffer += data
        self._arm()
        while len(self.buffer) >= 2:
            (size,) = struct.unpack_from("!H", self.buffer)
            if len(self.buffer) < 2 + size:
                break
            wire, self.buffer = self.buffer[2 : 2 + size], self.buffer[2 + size :]
            reply = listener.query(wire, self.peer, tcp=True)
            if reply is None:  # unparseable: the stream cannot be trusted any more
                self.abort()
                return
            assert self.transport is not None
            self.transport.write(struct.pack("!H", len(reply)) + reply)
            listener.metrics.bytes(listener.name, "out", len(reply) + 2)
        if len(self.buffer) > TCP_BUFFER_LIMIT:
            self.abort()

    def pause_writing(self) -> None:
        # A client that asks without reading its answers waits until it reads.
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.listener.connections.discard(self)
