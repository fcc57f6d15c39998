"""IP lists and connection limits on layer-4 listeners: a refused connection is closed at once
(a refused UDP datagram dropped), counted and logged, and the others go on."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest

from tests.l4.test_tcp import StartBackend, StartBalancer, echo, tcp_config, wait_for
from tests.l4.test_udp import Client, Echo, ask, udp_config
from usher.config import parse_config
from usher.errors import ConfigError


async def closed_at_once(port: int, first: bytes = b"hello") -> bool:
    """Whether the balancer closes this connection without relaying anything."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(first)
        with contextlib.suppress(ConnectionResetError):
            return await asyncio.wait_for(reader.read(100), 5) == b""
        return True
    finally:
        writer.close()


async def test_deny_list_closes_the_connection(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    port = await raw_backend(echo)
    config = tcp_config(port)
    config["listeners"][0]["limits"] = {"deny": ["127.0.0.0/8"]}
    b = await balancer(config)
    assert await closed_at_once(b.port)
    await wait_for(lambda: b.balancer.metrics.rejected_total.get(("db", "ip_denied")) == 1)
    assert "ip_denied" in b.log.getvalue()


@pytest.mark.parametrize("zero_copy", [False, True], ids=["plain", "splice"])
async def test_the_address_from_a_proxy_header_is_the_one_judged(
    raw_backend: StartBackend, balancer: StartBalancer, zero_copy: bool
) -> None:
    port = await raw_backend(echo)
    config = tcp_config(port, zero_copy=zero_copy)
    listener = config["listeners"][0]
    listener["accept_proxy_protocol"] = True
    listener["limits"] = {"allow": ["203.0.113.0/24"], "deny": ["203.0.113.66/32"]}
    b = await balancer(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"PROXY TCP4 203.0.113.7 198.51.100.1 40000 5432\r\nhello")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    writer.close()
    for denied in (b"203.0.113.66", b"198.51.100.9"):  # on the deny list; not on the allow list
        header = b"PROXY TCP4 " + denied + b" 198.51.100.1 40000 5432\r\n"
        assert await closed_at_once(b.port, header + b"hello")
    await wait_for(lambda: b.balancer.metrics.rejected_total.get(("db", "ip_denied")) == 2)


async def test_connections_per_ip_refuses_the_extra_one_and_frees_its_slot(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    port = await raw_backend(echo)
    config = tcp_config(port)
    config["listeners"][0]["limits"] = {"connections_per_ip": 2}
    b = await balancer(config)
    held = []
    for i in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
        writer.write(b"%d" % i)
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"%d" % i
        held.append((reader, writer))
    assert await closed_at_once(b.port)
    assert b.balancer.metrics.rejected_total[("db", "connections_per_ip")] == 1
    # The held connections still work; closing one makes room for a new one.
    reader, writer = held[0]
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
    writer.close()
    await wait_for(lambda: len(b.balancer.listeners["db"].connections) == 1)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"y")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"y"
    writer.close()
    held[1][1].close()


async def test_max_connections_counts_every_client(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    port = await raw_backend(echo)
    config = tcp_config(port)
    config["listeners"][0]["limits"] = {"max_connections": 1}
    b = await balancer(config)
    reader, writer = await asyncio.open_connection("127.0.0.1", b.port)
    writer.write(b"a")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"a"
    assert await closed_at_once(b.port)
    assert b.balancer.metrics.rejected_total[("db", "max_connections")] == 1
    writer.close()


async def test_udp_deny_list_drops_datagrams(udp: Any, balancer: StartBalancer) -> None:
    a = Echo("A")
    ta = await udp(a, local_addr=("127.0.0.1", 0))
    config = udp_config(ta.get_extra_info("sockname")[1])
    config["listeners"][0]["limits"] = {"allow": ["10.0.0.0/8"]}
    b = await balancer(config)
    client = Client()
    transport = await udp(client, remote_addr=("127.0.0.1", b.port))
    transport.sendto(b"dropped")
    await wait_for(lambda: b.balancer.metrics.rejected_total.get(("dns", "ip_denied")) == 1)
    assert client.inbox.empty()
    config["listeners"][0]["limits"] = {"allow": ["127.0.0.0/8"]}
    allowed = await balancer(config)
    transport = await udp(client, remote_addr=("127.0.0.1", allowed.port))
    assert await ask(client, transport, b"1") == b"A:1"


@pytest.mark.parametrize(
    ("protocol", "limits", "message"),
    [
        ("tcp", "{rate: 10/s}", "limits.rate: works on HTTP requests: not for protocol tcp"),
        ("tls_passthrough", "{min_body_rate: 1KiB/s}", "limits.min_body_rate: works on HTTP"),
        ("udp", "{connections_per_ip: 3}", "udp has no connections: use max_sessions"),
    ],
)
def test_limits_that_need_http_are_refused_on_layer4(
    protocol: str, limits: str, message: str
) -> None:
    text = (
        f"listeners: [{{name: t, bind: 127.0.0.1:0, protocol: {protocol}, pool: p, "
        f"limits: {limits}}}]\npools: {{p: {{backends: [{{address: 127.0.0.1:1}}]}}}}\n"
    )
    with pytest.raises(ConfigError, match=message):
        parse_config(text)
