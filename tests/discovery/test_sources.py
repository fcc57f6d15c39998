"""Each discovery source against a real server: what it finds, and how it fails."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aetcd
import pytest

from tests.conftest import free_port
from tests.discovery.servers import DnsServer, EtcdServer, write_atomically
from usher.config import BackendConfig, DnsDiscovery, EtcdDiscovery, FileDiscovery
from usher.discovery.dns import DnsSource
from usher.discovery.etcd import EtcdSource
from usher.discovery.file import FileSource
from usher.discovery.source import SourceError

pytestmark = pytest.mark.timeout(60)


def summary(found: list[BackendConfig]) -> list[tuple[str, int, bool, int | None]]:
    return sorted((str(b.address), b.weight, b.backup, b.max_connections) for b in found)


async def next_set(
    updates: AsyncIterator[list[BackendConfig]], timeout: float = 5.0
) -> list[BackendConfig]:
    return await asyncio.wait_for(anext(updates), timeout)


# --- file --------------------------------------------------------------------------------------


async def test_file_lists_entries_and_sees_an_atomic_rename(tmp_path: Path) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(
        "- 127.0.0.1:9001\n- {address: 127.0.0.1:9002, weight: 3, backup: true,"
        " max_connections: 7}\n"
    )
    source = FileSource(FileDiscovery(type="file", path=str(path), interval=0.05))
    updates = source.updates()
    assert summary(await next_set(updates)) == [
        ("127.0.0.1:9001", 1, False, None),
        ("127.0.0.1:9002", 3, True, 7),
    ]
    write_atomically(path, json.dumps([{"address": "127.0.0.1:9003"}]))  # JSON is fine too
    assert summary(await next_set(updates)) == [("127.0.0.1:9003", 1, False, None)]
    await updates.aclose()


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("- {address: 127.0.0.1:9001, weight: 0}", "backends.yaml[0]: weight: Input should be"),
        ("- {address: 127.0.0.1:9001", "not valid YAML or JSON"),
        ("{address: 127.0.0.1:9001}", "expected a list of backend entries"),
        ("[]", "lists no backends"),
        ("- nowhere", "backends.yaml[0]: address: Value error, invalid address 'nowhere'"),
    ],
)
async def test_a_bad_file_is_an_error_naming_it(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "backends.yaml"
    path.write_text(text)
    source = FileSource(FileDiscovery(type="file", path=str(path)))
    with pytest.raises(SourceError, match=r"backends\.yaml") as caught:
        await next_set(source.updates())
    assert problem in str(caught.value)


async def test_a_missing_file_is_an_error(tmp_path: Path) -> None:
    source = FileSource(FileDiscovery(type="file", path=str(tmp_path / "nope.yaml")))
    with pytest.raises(SourceError, match=r"nope.yaml: No such file"):
        await next_set(source.updates())


# --- dns ---------------------------------------------------------------------------------------


def dns_source(server: DnsServer, name: str, **options: object) -> DnsSource:
    config = DnsDiscovery.model_validate(
        {"type": "dns", "name": name, "resolver": server.address, "timeout": 0.3, **options}
    )
    return DnsSource(config)


async def test_srv_records_give_ports_weights_and_backups(dns_server: DnsServer) -> None:
    dns_server.set(
        "_http._tcp.app.test",
        "SRV",
        ["0 5 8001 a.app.test.", "0 0 8002 a.app.test.", "10 1 8003 b.app.test."],
    )
    dns_server.set("a.app.test", "A", ["127.0.0.1"])
    dns_server.set("b.app.test", "A", ["127.0.0.2"])
    dns_server.set("b.app.test", "AAAA", ["::1"])
    found, ttl = await dns_source(dns_server, "_http._tcp.app.test").resolve()
    assert summary(found) == [
        ("127.0.0.1:8001", 5, False, None),
        ("127.0.0.1:8002", 1, False, None),  # SRV weight 0: the least usher has
        ("127.0.0.2:8003", 1, True, None),  # a higher priority value: used when others fail
        ("[::1]:8003", 1, True, None),
    ]
    assert ttl == dns_server.ttl


async def test_a_and_aaaa_records_take_the_configured_port(dns_server: DnsServer) -> None:
    dns_server.set("app.test", "A", ["127.0.0.1", "127.0.0.3"])
    found, _ = await dns_source(dns_server, "app.test", port=8080, weight=2).resolve()
    assert summary(found) == [
        ("127.0.0.1:8080", 2, False, None),
        ("127.0.0.3:8080", 2, False, None),
    ]


async def test_nxdomain_and_a_silent_resolver_are_errors(dns_server: DnsServer) -> None:
    with pytest.raises(SourceError, match="no such name"):
        await dns_source(dns_server, "missing.test", port=80).resolve()
    dns_server.set("app.test", "A", ["127.0.0.1"])
    dns_server.down = True
    with pytest.raises(SourceError, match="no answer from the resolver"):
        await dns_source(dns_server, "app.test", port=80).resolve()


async def test_it_resolves_again_when_the_ttl_ends(dns_server: DnsServer) -> None:
    # interval 1 h: only the 1 s TTL can make it look again.
    dns_server.set("app.test", "A", ["127.0.0.1"])
    updates = dns_source(dns_server, "app.test", port=80, interval="1h").updates()
    assert summary(await next_set(updates)) == [("127.0.0.1:80", 1, False, None)]
    dns_server.set("app.test", "A", ["127.0.0.1", "127.0.0.2"])
    assert len(await next_set(updates, timeout=10)) == 2
    await updates.aclose()


# --- etcd --------------------------------------------------------------------------------------


async def put(etcd: EtcdServer, key: str, value: object) -> None:
    client = aetcd.Client("127.0.0.1", etcd.port)
    try:
        await client.put(key.encode(), json.dumps(value).encode())
    finally:
        await client.close()


def etcd_source(endpoints: list[str], prefix: str) -> EtcdSource:
    config = EtcdDiscovery.model_validate(
        {"type": "etcd", "endpoints": endpoints, "prefix": prefix, "timeout": 1}
    )
    return EtcdSource(config)


async def test_etcd_reads_the_prefix_then_follows_changes(
    etcd: EtcdServer, etcd_prefix: str
) -> None:
    await put(etcd, etcd_prefix + "a", {"address": "127.0.0.1:9001", "weight": 4})
    await put(etcd, "/elsewhere/b", {"address": "127.0.0.1:9009"})
    # The first endpoint is down: the next one answers.
    updates = etcd_source([f"127.0.0.1:{free_port()}", etcd.endpoint], etcd_prefix).updates()
    assert summary(await next_set(updates)) == [("127.0.0.1:9001", 4, False, None)]
    await put(etcd, etcd_prefix + "b", "127.0.0.1:9002")
    assert summary(await next_set(updates)) == [
        ("127.0.0.1:9001", 4, False, None),
        ("127.0.0.1:9002", 1, False, None),
    ]
    await updates.aclose()


async def test_etcd_bad_value_and_no_etcd_are_errors(etcd: EtcdServer, etcd_prefix: str) -> None:
    client = aetcd.Client("127.0.0.1", etcd.port)
    await client.put((etcd_prefix + "a").encode(), b"{not json")
    await client.close()
    with pytest.raises(SourceError, match=f"etcd key {etcd_prefix}a: not JSON"):
        await next_set(etcd_source([etcd.endpoint], etcd_prefix).updates())
    with pytest.raises(SourceError, match="etcd unreachable"):
        await next_set(etcd_source([f"127.0.0.1:{free_port()}"], etcd_prefix).updates())
