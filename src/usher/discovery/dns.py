"""The `dns` source: SRV records (target, port, weight; a higher priority is a backup) or
A/AAAA records with the configured port, through dnspython. It resolves again after the
shortest TTL of the answer, or after `interval` when that comes first."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.resolver

from usher.config import BackendConfig, DnsDiscovery, HostPort
from usher.discovery.source import SourceError, require_some, source_label
from usher.errors import NoRecords

# A TTL of 0 must not turn into a query loop.
MIN_REFRESH = 0.5


class DnsSource:
    def __init__(self, config: DnsDiscovery) -> None:
        self.config = config
        self.label = source_label(config)
        self.retry = config.interval
        self.srv = config.name.startswith("_")
        self._resolver: dns.asyncresolver.Resolver | None = None

    @property
    def resolver(self) -> dns.asyncresolver.Resolver:
        """Built on first use: the system's reads /etc/resolv.conf, which may be missing."""
        if self._resolver is None:
            address = self.config.resolver
            if address is None:
                try:
                    self._resolver = dns.asyncresolver.Resolver()
                except dns.exception.DNSException as exc:
                    raise SourceError(f"no system resolver: {exc}") from None
            else:
                self._resolver = dns.asyncresolver.Resolver(configure=False)
                self._resolver.nameservers = [
                    dns.nameserver.Do53Nameserver(address.host, address.port)
                ]
        return self._resolver

    async def updates(self) -> AsyncIterator[list[BackendConfig]]:
        while True:
            found, ttl = await self.resolve()
            yield found
            await asyncio.sleep(max(MIN_REFRESH, min(self.config.interval, ttl)))

    async def resolve(self) -> tuple[list[BackendConfig], float]:
        """The backends the name stands for now, and how long the answer may be kept."""
        name = self.config.name
        if not self.srv:
            assert self.config.port is not None
            hosts, ttl = await self._addresses(name)
            found = [
                _entry(host, self.config.port, self.config.weight, backup=False) for host in hosts
            ]
            return require_some(found, name), ttl
        answer = await self._query(name, "SRV")
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else self.config.interval
        records: list[Any] = list(answer)
        best = min((r.priority for r in records), default=0)
        found = []
        targets: dict[str, tuple[list[str], float]] = {}  # records often share a target
        for record in records:
            target = record.target.to_text(omit_final_dot=True)
            if target not in targets:
                targets[target] = await self._addresses(target)
            hosts, host_ttl = targets[target]
            ttl = min(ttl, host_ttl)
            # SRV weight 0 means "rarely"; usher's weights start at 1.
            weight = max(1, int(record.weight))
            found += [
                _entry(host, int(record.port), weight, backup=record.priority != best)
                for host in hosts
            ]
        return require_some(found, name), ttl

    async def _addresses(self, name: str) -> tuple[list[str], float]:
        hosts: list[str] = []
        ttl = self.config.interval
        missing = 0
        for kind in ("A", "AAAA"):
            try:
                answer = await self._query(name, kind)
            except NoRecords:
                missing += 1
                continue
            if answer.rrset is not None:
                ttl = min(ttl, float(answer.rrset.ttl))
            hosts += [r.address for r in answer]
        if missing == 2:
            raise SourceError(f"{name}: no A or AAAA records")
        return hosts, ttl

    async def _query(self, name: str, kind: str) -> dns.resolver.Answer:
        try:
            return await self.resolver.resolve(name, kind, lifetime=self.config.timeout)
        except dns.resolver.NoAnswer:
            raise NoRecords from None
        except dns.resolver.NXDOMAIN:
            raise SourceError(f"{name}: no such name (NXDOMAIN)") from None
        except dns.exception.Timeout:
            raise SourceError(f"{name} {kind}: no answer from the resolver") from None
        except dns.exception.DNSException as exc:
            raise SourceError(f"{name} {kind}: {exc}") from None


def _entry(host: str, port: int, weight: int, *, backup: bool) -> BackendConfig:
    return BackendConfig(address=HostPort(host, port), weight=weight, backup=backup)
