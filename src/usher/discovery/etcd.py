"""The `etcd` source: every key under `prefix` holds one backend entry as JSON; the prefix is
read whole, then watched from that revision, and read whole again on each change (a set is
small; reading it whole cannot drift from etcd's). Through aetcd, etcd's asyncio v3 client."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aetcd

from usher.config import BackendConfig, EtcdDiscovery
from usher.discovery.source import SourceError, parse_entry, require_some, source_label

# How often a quiet connection to etcd is pinged to see that it is still there.
KEEPALIVE_MS = 10_000


class EtcdSource:
    def __init__(self, config: EtcdDiscovery) -> None:
        self.config = config
        self.label = source_label(config)
        self.retry = config.interval
        self.prefix = config.prefix.encode()
        self._next = 0  # the endpoint to try first: the one that answered last

    async def updates(self) -> AsyncIterator[list[BackendConfig]]:
        client = await self._connect()
        try:
            found, revision = await self._read(client)
            yield found
            try:
                watch = await client.watch_prefix(self.prefix, start_revision=revision + 1)
                async for _event in watch:
                    found, revision = await self._read(client)
                    yield found
            except aetcd.ClientError as exc:
                raise SourceError(f"etcd watch of {self.config.prefix}: {exc}") from None
            raise SourceError(f"etcd watch of {self.config.prefix} ended")
        finally:
            await client.close()

    async def _connect(self) -> aetcd.Client:
        endpoints = self.config.endpoints
        problems: list[str] = []
        for step in range(len(endpoints)):
            index = (self._next + step) % len(endpoints)
            endpoint = endpoints[index]
            client = aetcd.Client(
                endpoint.host,
                endpoint.port,
                timeout=max(1, round(self.config.timeout)),
                connect_wait_timeout=max(1, round(self.config.timeout)),
                # A watch is quiet while nothing changes: keepalive pings find a dead peer
                # that never closed the connection (a host gone, a network cut).
                options={
                    "grpc.keepalive_time_ms": KEEPALIVE_MS,
                    "grpc.keepalive_timeout_ms": max(1000, round(self.config.timeout * 1000)),
                    "grpc.keepalive_permit_without_calls": 1,
                },
            )
            try:
                await asyncio.wait_for(client.status(), self.config.timeout)
            except (aetcd.ClientError, TimeoutError) as exc:
                await client.close()
                problems.append(f"{endpoint}: {exc or 'timed out'}")
                continue
            self._next = index
            return client
        raise SourceError("etcd unreachable: " + "; ".join(problems))

    async def _read(self, client: aetcd.Client) -> tuple[list[BackendConfig], int]:
        try:
            result = await asyncio.wait_for(client.get_prefix(self.prefix), self.config.timeout)
        except (aetcd.ClientError, TimeoutError) as exc:
            raise SourceError(f"etcd read of {self.config.prefix}: {exc or 'timed out'}") from None
        found = [_entry(kv.key, kv.value) for kv in result]
        return require_some(found, f"etcd prefix {self.config.prefix}"), result.header.revision


def _entry(key: bytes, value: bytes) -> BackendConfig:
    where = f"etcd key {key.decode(errors='replace')}"
    try:
        data: Any = json.loads(value)
    except ValueError as exc:
        raise SourceError(f"{where}: not JSON: {exc}") from None
    return parse_entry(data, where)
