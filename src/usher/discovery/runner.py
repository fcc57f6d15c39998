"""The runner: one task per discovery source, each source's last good set, and the pools kept
in line with them.

Backends found join a pool through the same path the admin API uses (slow start, health
checks); a backend no source lists any more drains and is then removed. A source that fails
keeps its last good set and is logged once until it recovers. It runs where the live pools
are: in the control process when there are several workers, which follow by the state sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from usher.config import (
    BackendConfig,
    Discovery,
    DnsDiscovery,
    EtcdDiscovery,
    FileDiscovery,
    PoolConfig,
)
from usher.discovery.source import Source, SourceError, source_label
from usher.pool import ADMIN_SOURCE, CONFIG_SOURCE, Backend, BackendSpec, Pool

if TYPE_CHECKING:
    from usher.server import Balancer

log = logging.getLogger("usher.discovery")

Key = tuple[str, str]  # (pool, source label)


def build_source(config: Discovery) -> Source:
    """The source a config entry names. Each is imported here, when a config uses it: each
    pulls in its own client library. (Not in source.py, which each source imports.)"""
    if isinstance(config, DnsDiscovery):
        from usher.discovery.dns import DnsSource

        return DnsSource(config)
    if isinstance(config, EtcdDiscovery):
        from usher.discovery.etcd import EtcdSource

        return EtcdSource(config)
    assert isinstance(config, FileDiscovery)
    from usher.discovery.file import FileSource

    return FileSource(config)


class DiscoveryRunner:
    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer
        self.configs: dict[Key, Discovery] = {}
        self.tasks: dict[Key, asyncio.Task[None]] = {}
        self.found: dict[Key, list[BackendConfig]] = {}  # each source's last good set
        self.order: dict[str, list[str]] = {}  # each pool's source labels, in config order
        self._leaving: dict[tuple[str, str], asyncio.Task[None]] = {}  # (pool, address)

    def update(self, pools: Mapping[str, PoolConfig]) -> None:
        """Run the sources `pools` name: unchanged ones go on, changed ones restart (keeping
        their last set until they find a new one), gone ones stop and their backends drain."""
        wanted: dict[Key, Discovery] = {}
        self.order = {}
        for name, pool in pools.items():
            labels = self.order.setdefault(name, [])
            for source in pool.discovery:
                key = (name, source_label(source))
                if key not in wanted:
                    wanted[key] = source
                    labels.append(key[1])
        for key in [k for k in self.tasks if wanted.get(k) != self.configs.get(k)]:
            self.tasks.pop(key).cancel()
            if key not in wanted:
                self.found.pop(key, None)
                self.configs.pop(key, None)
        for key, config in wanted.items():
            if key not in self.tasks:
                self.configs[key] = config
                self.tasks[key] = asyncio.get_running_loop().create_task(
                    self._run(key, build_source(config)), name=f"discovery {key[0]} {key[1]}"
                )
        for name in self.balancer.pools:
            self.apply(name)

    async def stop(self) -> None:
        tasks = [*self.tasks.values(), *self._leaving.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
        self._leaving.clear()

    async def _run(self, key: Key, source: Source) -> None:
        pool_name, label = key
        failing = False
        while True:
            try:
                async for found in source.updates():
                    if failing:
                        log.warning("discovery %s of pool %s: answering again", label, pool_name)
                        failing = False
                    self.found[key] = found
                    self.apply(pool_name)
            except SourceError as exc:
                if not failing:  # once per outage, not once per attempt
                    kept = len(self.found.get(key, []))
                    log.warning(
                        "discovery %s of pool %s failed: %s; keeping the %d backends it found last",
                        label,
                        pool_name,
                        exc,
                        kept,
                    )
                    failing = True
            await asyncio.sleep(source.retry)

    def wanted(self, pool: Pool) -> dict[str, tuple[BackendConfig, str]]:
        """Address -> (entry, source) of every discovered backend the pool should have; the
        file's own backends win over a source, and the first source listing an address owns it."""
        static = {str(b.address) for b in pool.config.backends}
        wanted: dict[str, tuple[BackendConfig, str]] = {}
        for label in self.order.get(pool.name, []):
            for entry in self.found.get((pool.name, label), []):
                address = str(entry.address)
                if address not in static and address not in wanted:
                    wanted[address] = (entry, label)
        return wanted

    def apply(self, pool_name: str) -> None:
        """Make the pool's discovered backends match the sources' last good sets."""
        pool = self.balancer.pools.get(pool_name)
        if pool is None:
            return
        self.balancer.sync_counts()  # a drain that starts now sees the requests in flight now
        wanted = self.wanted(pool)
        for backend in list(pool.backends):
            if backend.source in (CONFIG_SOURCE, ADMIN_SOURCE):
                continue
            want = wanted.get(backend.label)
            if want is None:
                self._retire(pool, backend)
            else:
                self._refresh(pool, backend, *want)
        checker = self.balancer.checkers.get(pool_name)
        for address, (entry, label) in wanted.items():
            if pool.find(address) is None:
                backend = pool.add_backend(entry, label)
                if checker is not None:
                    checker.add_backend(backend)
                log.warning("backend %s in pool %s: added by %s", address, pool_name, label)

    def _refresh(self, pool: Pool, backend: Backend, entry: BackendConfig, label: str) -> None:
        leaving = self._leaving.pop((pool.name, backend.label), None)
        if leaving is not None and backend.state == "draining":
            pool.set_state(backend, "enabled", f"listed again by {label}")  # the drain ends
        pool.update([BackendSpec.of(entry, label)])  # its weight and tier, as the source says

    def _retire(self, pool: Pool, backend: Backend) -> None:
        key = (pool.name, backend.label)
        if key in self._leaving:
            return
        if backend.state == "disabled":  # nothing in flight to wait for
            pool.remove_backend(backend)
            self._forget(pool.name, backend)
            return
        log.warning(
            "backend %s in pool %s: gone from %s, draining",
            backend.label,
            pool.name,
            backend.source,
        )
        task = asyncio.get_running_loop().create_task(self._drain_out(pool, backend))
        self._leaving[key] = task

    async def _drain_out(self, pool: Pool, backend: Backend) -> None:
        key = (pool.name, backend.label)
        try:
            await pool.drain(backend, remove=True)
        finally:
            if self._leaving.get(key) is asyncio.current_task():
                del self._leaving[key]
        if backend not in pool.backends:
            self._forget(pool.name, backend)

    def _forget(self, pool_name: str, backend: Backend) -> None:
        checker = self.balancer.checkers.get(pool_name)
        if checker is not None:
            checker.remove_backend(backend)
