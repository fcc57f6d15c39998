"""Fixtures of the discovery tests: the DNS server and etcd (skipped, with the reason, when
the etcd binary is missing: Debian package etcd-server, installed by `make system-tools`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.discovery.servers import DnsServer, EtcdServer, etcd_binary


@pytest.fixture
async def dns_server() -> AsyncIterator[DnsServer]:
    server = await DnsServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    if etcd_binary() is None:
        pytest.skip("no etcd binary: install the Debian package etcd-server (make system-tools)")
    server = EtcdServer(tmp_path_factory.mktemp("etcd")).start()
    yield server
    server.stop()


@pytest.fixture
def etcd_prefix(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own, so tests sharing the etcd server do not meet."""
    return f"/usher-test/{request.node.name}/"
