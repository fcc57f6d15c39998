"""Building DNS engines over a snapshot of sites, and asking them with dnspython messages."""

from __future__ import annotations

import random
from typing import Any

import dns.edns
import dns.message
import dns.rdatatype

from usher.config import DnsSettings
from usher.dns.answer import Engine, Outcome
from usher.dns.policies import Candidate


def site(
    pool: str,
    host: str,
    *,
    weight: int = 1,
    healthy: bool = True,
    rtt: float | None = None,
    port: int = 80,
) -> Candidate:
    return Candidate(pool, host, port, weight, healthy, rtt)


class Sites:
    """A mutable snapshot: tests flip health between queries."""

    def __init__(self, *candidates: Candidate) -> None:
        self.items = list(candidates)

    def __call__(self, pool: str) -> list[Candidate]:
        return [c for c in self.items if c.pool == pool]

    def set_health(self, host: str, healthy: bool) -> None:
        self.items = [
            Candidate(c.pool, c.host, c.port, c.weight, healthy, c.rtt) if c.host == host else c
            for c in self.items
        ]


def engine(
    records: list[dict[str, Any]], sites: Sites, *, seed: int = 7, **settings: Any
) -> Engine:
    config = DnsSettings.model_validate({"zones": ["example.com"], "records": records, **settings})
    return Engine(config, sites, rng=random.Random(seed), serial=2026)


def ask(
    e: Engine,
    name: str,
    rdtype: str = "A",
    *,
    client: str = "192.0.2.99",
    tcp: bool = False,
    ecs: str | None = None,
    payload: int | None = None,
) -> tuple[dns.message.Message, Outcome]:
    options = []
    if ecs is not None:
        address, _, prefix = ecs.partition("/")
        options.append(dns.edns.ECSOption(address, int(prefix)))
    query = dns.message.make_query(
        name,
        rdtype,
        use_edns=0 if (options or payload) else None,
        payload=payload or 1232,
        options=options or None,
    )
    outcome = e.answer(query.to_wire(), client, tcp=tcp)
    assert outcome is not None
    return dns.message.from_wire(outcome.wire), outcome


def addresses(response: dns.message.Message) -> list[str]:
    return [
        rd.address
        for rrset in response.answer
        for rd in rrset
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA)
    ]
