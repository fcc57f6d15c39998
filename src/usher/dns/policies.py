"""How a DNS record picks the addresses it answers from its sites' backends: one function per
policy, over a snapshot of the backends (no I/O, randomness from the caller's RNG).

Every policy sees only healthy backends unless none is: an unhealthy site is never answered
while a healthy one exists. The caller applies `when_all_down` when a policy returns nothing.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from usher.config import DnsRecord

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# Answers when `answers` is not set: one for the policies that pick a single best address
# (Route 53 answers one for weighted and latency records), every healthy one for the others.
_SINGLE: Final = frozenset({"weighted", "latency"})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One backend of a site as the DNS engine sees it at the time of a query."""

    pool: str
    host: str  # an IP address (the config makes sure)
    port: int
    weight: int
    healthy: bool
    rtt: float | None  # the last successful health check's round trip from this node, seconds

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


Sites = Callable[[str], Sequence[Candidate]]


@dataclass(frozen=True, slots=True)
class CompiledRecord:
    """A record's settings with its geo networks parsed once."""

    config: DnsRecord
    geo: tuple[tuple[tuple[Network, ...], str], ...]

    @classmethod
    def build(cls, config: DnsRecord) -> CompiledRecord:
        rules = tuple(
            (tuple(ipaddress.ip_network(c) for c in rule.clients), rule.pool) for rule in config.geo
        )
        return cls(config, rules)

    def all_pools(self) -> list[str]:
        """Every pool the record may answer from, geo rules first, without repeats."""
        return list(dict.fromkeys([p for _, p in self.geo] + list(self.config.pools)))

    def geo_order(self, client: Network | None) -> list[str]:
        """The pools to try for `client`: its matching rules in order, then `pools` (the
        default), then the other rules' pools (the fallbacks when its own site is down)."""
        matching = [pool for nets, pool in self.geo if client is not None and _within(client, nets)]
        rest = [pool for _, pool in self.geo]
        return list(dict.fromkeys(matching + list(self.config.pools) + rest))


def _within(client: Network, networks: Sequence[Network]) -> bool:
    return any(
        client.version == net.version and client.subnet_of(net)  # type: ignore[arg-type]
        for net in networks
    )


class Selector:
    """Picks the answer of a record; holds the round-robin positions between queries."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._turns: dict[str, int] = {}

    def select(
        self,
        record: CompiledRecord,
        sites: Sites,
        client: Network | None,
        family: Callable[[Candidate], bool],
    ) -> tuple[list[Candidate], bool]:
        """The addresses to answer, and whether they are healthy ones (False: every backend
        is down and these are all of them, for `when_all_down: all`)."""
        config = record.config
        policy = config.policy
        order = record.geo_order(client) if policy == "geo" else record.all_pools()
        by_pool = {name: [c for c in sites(name) if family(c)] for name in order}
        cap = config.answers or (1 if policy in _SINGLE else None)
        healthy = {name: [c for c in found if c.healthy] for name, found in by_pool.items()}
        if not any(healthy.values()):
            everything = [c for name in order for c in by_pool[name]]
            return everything[:cap], False
        if policy in ("failover", "geo"):
            first = next(found for found in healthy.values() if found)
            return first[:cap], True
        up = [c for name in order for c in healthy[name]]
        if policy == "weighted":
            return self._weighted(up, cap or 1), True
        if policy == "latency":
            up.sort(key=lambda c: float("inf") if c.rtt is None else c.rtt)
            return up[:cap], True
        if policy == "round_robin":
            turn = self._turns.get(config.name, 0)
            self._turns[config.name] = turn + 1
            start = turn % len(up)
            up = up[start:] + up[:start]
        return up[:cap], True

    def _weighted(self, up: list[Candidate], count: int) -> list[Candidate]:
        """`count` distinct backends drawn by weight, without replacement."""
        left = list(up)
        picked: list[Candidate] = []
        while left and len(picked) < count:
            chosen = self.rng.choices(left, weights=[c.weight for c in left])[0]
            picked.append(chosen)
            left.remove(chosen)
        return picked
