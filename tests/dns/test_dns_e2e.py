"""dns listeners through real sockets: dnspython's query functions and `dig` against a started
balancer, for each policy; health checks going down flip the answers; TCP fallback; RRL;
malformed input; reload keeps the sockets."""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import dns.asyncquery
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import pytest

from tests.conftest import RunningBalancer
from tests.dns.helpers import addresses
from tests.l4.test_tcp import wait_for
from usher.clock import ManualClock
from usher.config import parse_config
from usher.demo.origin import BackendServer, start_backend
from usher.dns.server import DnsListener
from usher.metrics import render

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
DIG = shutil.which("dig")
needs_dig = pytest.mark.skipif(DIG is None, reason="dig is not installed (Debian dnsutils)")

POOLS: dict[str, Any] = {
    "us": {"backends": [{"address": "192.0.2.1:80", "weight": 3}, {"address": "192.0.2.2:80"}]},
    "eu": {"backends": [{"address": "198.51.100.1:80"}, {"address": "[2001:db8::5]:80"}]},
}
RECORDS: list[dict[str, Any]] = [
    {"name": "www.example.com", "policy": "weighted", "pools": ["us"]},
    {"name": "api.example.com", "policy": "failover", "pools": ["us", "eu"]},
    {
        "name": "geo.example.com",
        "policy": "geo",
        "geo": [
            {"clients": ["10.1.0.0/16", "2001:db8:1::/48"], "pool": "eu"},
            {"clients": ["0.0.0.0/0", "::/0"], "pool": "us"},
        ],
    },
    {"name": "rr.example.com", "policy": "round_robin", "pools": ["us", "eu"]},
    {"name": "all.example.com", "policy": "all", "pools": ["us", "eu"], "ttl": "5s"},
    {"name": "fast.example.com", "policy": "latency", "pools": ["us", "eu"]},
]


def dns_config(
    records: list[dict[str, Any]] | None = None,
    pools: dict[str, Any] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    settings.setdefault("rate_limit", None)
    return {
        "listeners": [
            {
                "name": "gslb",
                "bind": "127.0.0.1:0",
                "protocol": "dns",
                "dns": {"zones": ["example.com"], "records": records or RECORDS, **settings},
            }
        ],
        "pools": pools or POOLS,
    }


async def query(
    port: int, name: str, rdtype: str = "A", *, tcp: bool = False, **make: Any
) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **make)
    send = dns.asyncquery.tcp if tcp else dns.asyncquery.udp
    return await send(q, "127.0.0.1", port=port, timeout=5)


async def dig(port: int, *args: str) -> str:
    assert DIG is not None
    proc = await asyncio.create_subprocess_exec(
        DIG,
        "-p",
        str(port),
        "@127.0.0.1",
        "+tries=1",
        "+time=5",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


class UdpClient(asyncio.DatagramProtocol):
    """One client socket: what it sends goes out in order, answers queue up as they come."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.inbox.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def recv(self) -> bytes:
        return await asyncio.wait_for(self.inbox.get(), 5)


@pytest.fixture
async def udp_client() -> AsyncIterator[Callable[[int], Awaitable[UdpClient]]]:
    opened: list[UdpClient] = []

    async def open_client(port: int) -> UdpClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_datagram_endpoint(UdpClient, remote_addr=("127.0.0.1", port))
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        if client.transport is not None:
            client.transport.close()


OpenClient = Callable[[int], Awaitable[UdpClient]]


def metric_lines(running: RunningBalancer, prefix: str) -> list[str]:
    body, _ = render(running.balancer.registry)
    return [line for line in body.decode().splitlines() if line.startswith(prefix)]


async def test_each_policy_over_udp_and_tcp_with_dnspython(balancer: StartBalancer) -> None:
    running = await balancer(dns_config())
    port = running.port
    listener = running.balancer.listeners["gslb"]
    assert isinstance(listener, DnsListener)
    listener.rng.seed(3)
    for tcp in (False, True):
        www = await query(port, "www.example.com", tcp=tcp)
        assert www.flags & dns.flags.AA and len(addresses(www)) == 1
        assert addresses(www)[0] in ("192.0.2.1", "192.0.2.2")
        assert addresses(await query(port, "api.example.com", tcp=tcp)) == [
            "192.0.2.1",
            "192.0.2.2",
        ]
        assert addresses(await query(port, "geo.example.com", tcp=tcp)) == [
            "192.0.2.1",
            "192.0.2.2",
        ]
        eu = await query(
            port,
            "geo.example.com",
            "AAAA",
            tcp=tcp,
            use_edns=0,
            options=[dns.edns.ECSOption("2001:db8:1::", 48)],
        )
        assert addresses(eu) == ["2001:db8::5"]
        assert len(addresses(await query(port, "all.example.com", tcp=tcp))) == 3
        assert (await query(port, "all.example.com", tcp=tcp)).answer[0].ttl == 5
        nx = await query(port, "nope.example.com", tcp=tcp)
        assert nx.rcode() == dns.rcode.NXDOMAIN and nx.authority[0].rdtype == dns.rdatatype.SOA
        assert (await query(port, "example.net", tcp=tcp)).rcode() == dns.rcode.REFUSED
    firsts = [addresses(await query(port, "rr.example.com"))[0] for _ in range(3)]
    assert firsts == ["192.0.2.1", "192.0.2.2", "198.51.100.1"]
    # One access-log line per query: client, name, type, rcode, answers.
    lines = running.log.getvalue().splitlines()
    assert len(lines) == 2 * 8 + 3
    assert any(
        " DNS/TCP gslb api.example.com A NOERROR answers=192.0.2.1:80,192.0.2.2:80 " in line
        for line in lines
    )
    assert any(" DNS/UDP gslb nope.example.com A NXDOMAIN answers=- " in line for line in lines)
    queries = metric_lines(running, "usher_dns_queries_total")
    assert (
        'usher_dns_queries_total{listener="gslb",policy="failover",rcode="NOERROR",'
        'record="api.example.com"} 2.0' in queries
    )
    answers = metric_lines(running, "usher_dns_answers_total")
    assert (
        'usher_dns_answers_total{backend="[2001:db8::5]:80",listener="gslb",pool="eu",'
        'record="geo.example.com"} 2.0' in answers
    )


async def test_weighted_split_measured_over_1000_queries(
    balancer: StartBalancer, udp_client: OpenClient
) -> None:
    running = await balancer(dns_config())
    listener = running.balancer.listeners["gslb"]
    assert isinstance(listener, DnsListener)
    listener.rng.seed(11)
    counts: collections.Counter[str] = collections.Counter()
    client = await udp_client(running.port)
    for i in range(1000):
        q = dns.message.make_query("www.example.com", "A")
        q.id = i
        client.send(q.to_wire())
        response = dns.message.from_wire(await client.recv())
        assert response.id == i
        counts[addresses(response)[0]] += 1
    share = counts["192.0.2.1"] / 1000
    print(f"weighted 3:1 over 1000 queries: {dict(counts)} ({share:.1%} for weight 3)")
    assert sum(counts.values()) == 1000
    assert 0.70 <= share <= 0.80, counts


@needs_dig
async def test_dig_shows_each_policy(balancer: StartBalancer) -> None:
    running = await balancer(dns_config())
    port = running.port
    listener = running.balancer.listeners["gslb"]
    assert isinstance(listener, DnsListener)
    listener.rng.seed(5)
    www = (await dig(port, "+short", "www.example.com")).split()
    assert len(www) == 1 and www[0] in ("192.0.2.1", "192.0.2.2")
    assert (await dig(port, "+short", "api.example.com")).split() == ["192.0.2.1", "192.0.2.2"]
    eu = await dig(port, "+subnet=10.1.2.0/24", "geo.example.com")
    assert "CLIENT-SUBNET: 10.1.2.0/24/24" in eu and "198.51.100.1" in eu and "192.0.2.1" not in eu
    assert (await dig(port, "+short", "geo.example.com")).split() == ["192.0.2.1", "192.0.2.2"]
    rr = [(await dig(port, "+short", "rr.example.com")).split()[0] for _ in range(2)]
    assert rr == ["192.0.2.1", "192.0.2.2"]
    assert (await dig(port, "+short", "all.example.com", "AAAA")).split() == ["2001:db8::5"]
    assert len((await dig(port, "+short", "fast.example.com")).split()) == 1
    apex = await dig(port, "example.com", "SOA")
    assert "status: NOERROR" in apex and "flags: qr aa" in apex and "ns.example.com." in apex
    assert "status: NXDOMAIN" in await dig(port, "nope.example.com")
    assert "status: REFUSED" in await dig(port, "www.example.org")
    assert "status: NOERROR" in await dig(port, "+tcp", "api.example.com")
    srv = (await dig(port, "+short", "api.example.com", "SRV")).splitlines()
    assert sorted(srv) == ["0 1 80 192-0-2-2.api.example.com.", "0 3 80 192-0-2-1.api.example.com."]


@needs_dig
async def test_oversized_answers_truncate_and_fall_back_to_tcp(balancer: StartBalancer) -> None:
    big = {"backends": [{"address": f"10.0.{i // 200}.{i % 200 + 1}:80"} for i in range(300)]}
    running = await balancer(
        dns_config([{"name": "big.example.com", "pools": ["big"]}], {"big": big})
    )
    udp = await query(running.port, "big.example.com")
    assert udp.flags & dns.flags.TC and not udp.answer
    full, used_tcp = await dns.asyncquery.udp_with_fallback(
        dns.message.make_query("big.example.com", "A"), "127.0.0.1", port=running.port, timeout=5
    )
    assert used_tcp and len(addresses(full)) == 300
    out = await dig(running.port, "+noedns", "big.example.com")
    assert "Truncated, retrying in TCP mode" in out and out.count("\tA\t") == 300


async def test_malformed_input_gets_formerr_or_nothing(
    balancer: StartBalancer, udp_client: OpenClient
) -> None:
    running = await balancer(dns_config())
    good = dns.message.make_query("api.example.com", "A")
    good.id = 0xBEEF
    wire = good.to_wire()
    client = await udp_client(running.port)
    # In order: nothing for these two, FORMERR for the third, then the good answer.
    for datagram in (b"\x00" * 5, dns.message.make_response(good).to_wire(), wire[:-2], wire):
        client.send(datagram)
    first = await client.recv()
    second = await client.recv()
    assert first[:2] == b"\xbe\xef" and first[3] & 0xF == dns.rcode.FORMERR and len(first) == 12
    assert dns.message.from_wire(second).rcode() == dns.rcode.NOERROR
    # TCP: a garbage frame with a header gets FORMERR; a frame too short to have one, a reset.
    reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
    writer.write(len(wire[:-2]).to_bytes(2, "big") + wire[:-2] + b"\x00\x05hello")
    size = int.from_bytes(await asyncio.wait_for(reader.readexactly(2), 5), "big")
    assert (await reader.readexactly(size))[3] & 0xF == dns.rcode.FORMERR
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    rejected = metric_lines(running, "usher_rejected_total")
    assert 'usher_rejected_total{listener="gslb",reason="dns_unanswerable"} 3.0' in rejected


async def test_rate_limiting_drops_and_slips_per_subnet(
    balancer: StartBalancer, udp_client: OpenClient
) -> None:
    clock = ManualClock(100.0)
    running = await balancer(
        dns_config(rate_limit={"responses_per_second": 1, "burst": 3, "slip": 2}), clock=clock
    )
    client = await udp_client(running.port)
    for i in range(8):
        q = dns.message.make_query("all.example.com", "A")
        q.id = i
        client.send(q.to_wire())
    # 3 answers, then drop, slip, drop, slip, drop: the slipped ones are empty with TC.
    got = [dns.message.from_wire(await client.recv()) for _ in range(5)]
    assert [(r.id, bool(r.flags & dns.flags.TC), len(addresses(r))) for r in got] == [
        (0, False, 3),
        (1, False, 3),
        (2, False, 3),
        (4, True, 0),
        (6, True, 0),
    ]
    # TCP is never limited: the truncated client gets its answer there.
    assert len(addresses(await query(running.port, "all.example.com", tcp=True))) == 3
    clock.advance(1.0)  # one token back
    q = dns.message.make_query("all.example.com", "A")
    q.id = 99
    client.send(q.to_wire())
    again = dns.message.from_wire(await client.recv())
    assert again.id == 99 and len(addresses(again)) == 3
    limited = metric_lines(running, "usher_dns_rate_limited_total")
    assert 'usher_dns_rate_limited_total{action="dropped",listener="gslb"} 3.0' in limited
    assert 'usher_dns_rate_limited_total{action="slipped",listener="gslb"} 2.0' in limited


class _SlowHealth(asyncio.Protocol):
    """An HTTP server whose /health answers after `delay` seconds (a far-away site)."""

    def __init__(self, owner: SlowSite) -> None:
        self.owner = owner

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            asyncio.get_running_loop().call_later(self.owner.delay, self._answer)

    def _answer(self) -> None:
        if not self.transport.is_closing():
            self.transport.write(
                b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n"
            )
            self.transport.close()


class SlowSite:
    def __init__(self, host: str, delay: float) -> None:
        self.host = host
        self.delay = delay
        self.server: asyncio.Server | None = None

    async def start(self) -> SlowSite:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _SlowHealth(self), self.host, 0)
        return self

    @property
    def address(self) -> str:
        assert self.server is not None
        return f"{self.host}:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def sites() -> AsyncIterator[Callable[[str, float], Awaitable[SlowSite]]]:
    started: list[SlowSite] = []

    async def start(host: str, delay: float) -> SlowSite:
        site = await SlowSite(host, delay).start()
        started.append(site)
        return site

    yield start
    for site in started:
        assert site.server is not None
        site.server.close()


CHECK = {
    "type": "http",
    "path": "/health",
    "interval": "100ms",
    "timeout": "2s",
    "healthy_threshold": 1,
    "unhealthy_threshold": 1,
}


async def test_latency_follows_the_health_check_round_trip(
    balancer: StartBalancer, sites: Callable[[str, float], Awaitable[SlowSite]]
) -> None:
    near = await sites("127.0.0.2", 0.0)
    far = await sites("127.0.0.3", 0.3)
    pools = {
        "a": {"backends": [{"address": far.address}], "health_check": CHECK},
        "b": {"backends": [{"address": near.address}], "health_check": CHECK},
    }
    running = await balancer(
        dns_config([{"name": "fast.example.com", "policy": "latency", "pools": ["a", "b"]}], pools)
    )
    backends = [running.pools[p].backends[0] for p in ("a", "b")]
    await wait_for(lambda: all(b.check_rtt is not None for b in backends), 10)
    assert addresses(await query(running.port, "fast.example.com")) == ["127.0.0.2"]
    near.delay, far.delay = 0.3, 0.0
    await wait_for(lambda: (backends[0].check_rtt or 1) < (backends[1].check_rtt or 0), 10)
    assert addresses(await query(running.port, "fast.example.com")) == ["127.0.0.3"]


async def test_health_checks_going_down_flip_the_answers(
    balancer: StartBalancer, backends: Callable[..., Awaitable[list[BackendServer]]]
) -> None:
    primary = await start_backend("127.0.0.2", 0)
    secondary = await start_backend("127.0.0.3", 0)
    try:
        pools = {
            "us": {"backends": [{"address": primary.address}], "health_check": CHECK},
            "eu": {"backends": [{"address": secondary.address}], "health_check": CHECK},
        }
        records = [
            {
                "name": "api.example.com",
                "policy": "failover",
                "pools": ["us", "eu"],
                "when_all_down": "servfail",
            },
            {"name": "www.example.com", "policy": "weighted", "pools": ["us", "eu"]},
        ]
        running = await balancer(dns_config(records, pools))
        port = running.port
        us, eu = running.pools["us"].backends[0], running.pools["eu"].backends[0]
        await wait_for(lambda: us.last_check is not None and eu.last_check is not None, 10)
        assert addresses(await query(port, "api.example.com")) == ["127.0.0.2"]
        primary.healthy = False  # its /health answers 503 from now on
        await wait_for(lambda: not us.healthy, 10)
        assert us.check_rtt is None and eu.check_rtt is not None  # a failed check has none
        assert addresses(await query(port, "api.example.com")) == ["127.0.0.3"]
        # Never the dead site while a live one exists, whatever the weights draw.
        assert {addresses(await query(port, "www.example.com"))[0] for _ in range(30)} == {
            "127.0.0.3"
        }
        secondary.healthy = False
        await wait_for(lambda: not eu.healthy, 10)
        assert (await query(port, "api.example.com")).rcode() == dns.rcode.SERVFAIL
        assert len(addresses(await query(port, "www.example.com"))) == 1  # when_all_down: all
        primary.healthy = True
        await wait_for(lambda: us.healthy, 10)
        assert addresses(await query(port, "api.example.com")) == ["127.0.0.2"]
    finally:
        await primary.close()
        await secondary.close()


async def test_reload_changes_records_and_keeps_the_sockets(balancer: StartBalancer) -> None:
    running = await balancer(dns_config())
    port = running.port
    server = running.balancer.dataplane.servers["gslb"]
    before = [s.getsockname() for s in server.sockets]
    changed = dns_config(
        [
            {"name": "api.example.com", "policy": "failover", "pools": ["eu", "us"]},
            {"name": "new.example.com", "policy": "all", "pools": ["us"]},
        ],
    )
    changed["listeners"][0]["bind"] = f"127.0.0.1:{port}"
    report = await running.balancer.reload(parse_config(json.dumps(changed), "reloaded.yaml"))
    assert report.listeners_kept == ["gslb"]
    assert running.balancer.dataplane.servers["gslb"] is server
    assert [s.getsockname() for s in server.sockets] == before
    for tcp in (False, True):
        assert addresses(await query(port, "api.example.com", tcp=tcp)) == ["198.51.100.1"]
        assert addresses(await query(port, "new.example.com", tcp=tcp)) == [
            "192.0.2.1",
            "192.0.2.2",
        ]
        assert (await query(port, "www.example.com", tcp=tcp)).rcode() == dns.rcode.NXDOMAIN


async def test_the_admin_api_lists_records_and_their_sites(balancer: StartBalancer) -> None:
    import httpx

    config = dns_config()
    config["admin"] = {"bind": "127.0.0.1:0"}
    running = await balancer(config)
    async with httpx.AsyncClient(base_url=running.balancer.admin_url or "") as client:
        body = (await client.get("/api/dns")).json()
        pools = (await client.get("/api/pools")).json()
    (gslb,) = body["listeners"]
    assert gslb["listener"] == "gslb" and gslb["zones"] == ["example.com"]
    assert gslb["url"] == f"dns://127.0.0.1:{running.port}"
    api = next(r for r in gslb["records"] if r["name"] == "api.example.com")
    assert api["policy"] == "failover" and [s["pool"] for s in api["sites"]] == ["us", "eu"]
    assert api["sites"][0]["backends"][0] == {
        "address": "192.0.2.1:80",
        "healthy": True,
        "weight": 3,
        "rtt_ms": None,
    }
    assert set(pools["pools"]) == {"us", "eu"}  # /api/pools as it was
