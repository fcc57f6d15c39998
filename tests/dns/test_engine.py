"""The DNS engine on dnspython messages: every policy, health, TTLs, the zone's own records,
errors, truncation and SRV, over a snapshot of sites and a seeded RNG."""

from __future__ import annotations

import collections
import struct

import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype

from tests.dns.helpers import Sites, addresses, ask, engine, site

US = [site("us", "192.0.2.1", weight=3, rtt=0.030), site("us", "192.0.2.2", weight=1, rtt=0.010)]
EU = [site("eu", "198.51.100.1", rtt=0.020), site("eu", "2001:db8::5", rtt=0.005)]


def two_sites() -> Sites:
    return Sites(*US, *EU)


def test_weighted_follows_backend_weights_over_1000_queries() -> None:
    sites = Sites(*US)
    e = engine([{"name": "www.example.com", "policy": "weighted", "pools": ["us"]}], sites)
    counts = collections.Counter(addresses(ask(e, "www.example.com")[0])[0] for _ in range(1000))
    # Weights 3:1 -> 750/250; a seeded RNG, with a margin that a broken draw would not meet.
    assert sum(counts.values()) == 1000
    assert 700 <= counts["192.0.2.1"] <= 800, counts


def test_weighted_answers_one_unless_answers_says_more() -> None:
    e = engine(
        [{"name": "www.example.com", "policy": "weighted", "pools": ["us", "eu"], "answers": 2}],
        two_sites(),
    )
    for _ in range(20):
        found = addresses(ask(e, "www.example.com")[0])
        assert len(found) == len(set(found)) == 2
    one = engine([{"name": "w.example.com", "policy": "weighted", "pools": ["us"]}], two_sites())
    assert len(addresses(ask(one, "w.example.com")[0])) == 1


def test_failover_takes_the_first_pool_with_a_healthy_backend() -> None:
    sites = two_sites()
    e = engine([{"name": "api.example.com", "policy": "failover", "pools": ["us", "eu"]}], sites)
    assert addresses(ask(e, "api.example.com")[0]) == ["192.0.2.1", "192.0.2.2"]
    sites.set_health("192.0.2.1", False)
    assert addresses(ask(e, "api.example.com")[0]) == ["192.0.2.2"]
    sites.set_health("192.0.2.2", False)
    assert addresses(ask(e, "api.example.com")[0]) == ["198.51.100.1"]
    sites.set_health("192.0.2.1", True)
    assert addresses(ask(e, "api.example.com")[0]) == ["192.0.2.1"]


GEO = {
    "name": "eu.example.com",
    "policy": "geo",
    "geo": [
        {"clients": ["10.1.0.0/16", "2001:db8:1::/48"], "pool": "eu"},
        {"clients": ["0.0.0.0/0", "::/0"], "pool": "us"},
    ],
}


def test_geo_uses_the_client_subnet_then_the_source_address() -> None:
    e = engine([GEO], two_sites())
    assert addresses(ask(e, "eu.example.com", client="10.1.2.3")[0]) == ["198.51.100.1"]
    assert addresses(ask(e, "eu.example.com", client="192.0.2.200")[0]) == [
        "192.0.2.1",
        "192.0.2.2",
    ]
    # A resolver in the US asking for a European client: the subnet wins, and is echoed.
    response, _ = ask(e, "eu.example.com", client="192.0.2.200", ecs="10.1.7.0/24")
    assert addresses(response) == ["198.51.100.1"]
    (option,) = [o for o in response.options if o.otype == 8]
    assert (option.address, option.srclen, option.scopelen) == ("10.1.7.0", 24, 24)
    # IPv6 client subnet, AAAA: only the v6 backend of the eu site.
    response, _ = ask(e, "eu.example.com", "AAAA", client="192.0.2.200", ecs="2001:db8:1:2::/64")
    assert addresses(response) == ["2001:db8::5"]


def test_geo_without_a_default_rule_falls_back_and_never_to_a_dead_site() -> None:
    record = {**GEO, "geo": [GEO["geo"][0]], "pools": ["us"]}  # no catch-all rule
    sites = two_sites()
    e = engine([record], sites)
    assert addresses(ask(e, "eu.example.com", client="203.0.113.9")[0]) == [
        "192.0.2.1",
        "192.0.2.2",
    ]
    sites.set_health("198.51.100.1", False)
    assert addresses(ask(e, "eu.example.com", client="10.1.0.1")[0]) == ["192.0.2.1", "192.0.2.2"]


def test_latency_prefers_the_lowest_health_check_round_trip() -> None:
    sites = two_sites()
    e = engine(
        [{"name": "fast.example.com", "policy": "latency", "pools": ["us", "eu"], "answers": 2}],
        sites,
    )
    assert addresses(ask(e, "fast.example.com")[0]) == ["192.0.2.2", "198.51.100.1"]
    sites.set_health("192.0.2.2", False)
    assert addresses(ask(e, "fast.example.com")[0]) == ["198.51.100.1", "192.0.2.1"]
    one = engine([{"name": "f.example.com", "policy": "latency", "pools": ["us", "eu"]}], sites)
    assert addresses(ask(one, "f.example.com", "AAAA")[0]) == ["2001:db8::5"]


def test_round_robin_rotates_and_all_answers_everything() -> None:
    e = engine(
        [
            {"name": "rr.example.com", "policy": "round_robin", "pools": ["us", "eu"]},
            {"name": "all.example.com", "policy": "all", "pools": ["us", "eu"], "answers": 2},
        ],
        two_sites(),
    )
    firsts = [ask(e, "rr.example.com")[1].answers[0][1] for _ in range(3)]
    assert firsts == ["192.0.2.1:80", "192.0.2.2:80", "198.51.100.1:80"]
    assert addresses(ask(e, "all.example.com")[0]) == ["192.0.2.1", "192.0.2.2"]


def test_when_all_down_answers_all_or_servfail() -> None:
    sites = two_sites()
    for c in list(sites.items):
        sites.set_health(c.host, False)
    e = engine(
        [
            {"name": "a.example.com", "policy": "failover", "pools": ["us", "eu"]},
            {
                "name": "s.example.com",
                "policy": "all",
                "pools": ["us"],
                "when_all_down": "servfail",
            },
        ],
        sites,
    )
    assert addresses(ask(e, "a.example.com")[0]) == ["192.0.2.1", "192.0.2.2", "198.51.100.1"]
    response, outcome = ask(e, "s.example.com")
    assert response.rcode() == dns.rcode.SERVFAIL and outcome.rcode == "SERVFAIL"
    assert not response.answer


def test_ttl_per_record_with_the_default_from_dns_ttl() -> None:
    e = engine(
        [
            {"name": "a.example.com", "pools": ["us"], "ttl": "5s"},
            {"name": "b.example.com", "pools": ["us"]},
        ],
        two_sites(),
        ttl="1m",
    )
    assert ask(e, "a.example.com")[0].answer[0].ttl == 5
    assert ask(e, "b.example.com")[0].answer[0].ttl == 60


def test_zone_apex_soa_ns_nxdomain_nodata_and_refused() -> None:
    e = engine(
        [
            {"name": "www.example.com", "pools": ["us"]},
            {"name": "a.b.example.com", "pools": ["us"]},
        ],
        two_sites(),
    )
    soa, _ = ask(e, "example.com", "SOA")
    assert soa.flags & dns.flags.AA and soa.answer[0].rdtype == dns.rdatatype.SOA
    assert soa.answer[0][0].serial == 2026 and soa.answer[0][0].mname.to_text() == "ns.example.com."
    ns, _ = ask(e, "EXAMPLE.com", "NS")
    # Compression may spell the target as the question did: names compare without case.
    assert [rd.target.to_text().lower() for rd in ns.answer[0]] == ["ns.example.com."]
    assert ns.answer[0].name.to_text() == "EXAMPLE.com."  # the question's spelling
    missing, outcome = ask(e, "nope.example.com")
    assert missing.rcode() == dns.rcode.NXDOMAIN and outcome.rcode == "NXDOMAIN"
    assert missing.authority[0].rdtype == dns.rdatatype.SOA and missing.flags & dns.flags.AA
    for name, rdtype in (("www.example.com", "MX"), ("b.example.com", "A"), ("example.com", "A")):
        nodata, _ = ask(e, name, rdtype)
        assert nodata.rcode() == dns.rcode.NOERROR and not nodata.answer, name
        assert nodata.authority[0].rdtype == dns.rdatatype.SOA
    refused, outcome = ask(e, "www.example.org")
    assert refused.rcode() == dns.rcode.REFUSED and not refused.flags & dns.flags.AA
    assert outcome.rcode == "REFUSED"


def test_nameservers_setting_and_www_case_insensitive() -> None:
    e = engine(
        [{"name": "www.example.com", "pools": ["us"]}],
        two_sites(),
        nameservers=["ns1.example.net", "ns2.example.net"],
    )
    ns, _ = ask(e, "example.com", "NS")
    assert sorted(rd.target.to_text() for rd in ns.answer[0]) == [
        "ns1.example.net.",
        "ns2.example.net.",
    ]
    assert addresses(ask(e, "WWW.Example.COM")[0]) == ["192.0.2.1", "192.0.2.2"]


def test_srv_answers_ports_weights_and_targets_with_their_addresses() -> None:
    sites = Sites(
        site("us", "192.0.2.1", weight=3, port=8080), site("us", "2001:db8::7", port=8443)
    )
    e = engine([{"name": "svc.example.com", "pools": ["us"]}], sites)
    response, _ = ask(e, "svc.example.com", "SRV")
    srv = sorted((rd.port, rd.weight, rd.target.to_text()) for rd in response.answer[0])
    v6 = "2001-0db8-0000-0000-0000-0000-0000-0007.svc.example.com."
    assert srv == [(8080, 3, "192-0-2-1.svc.example.com."), (8443, 1, v6)]
    glue = {rrset.name.to_text(): [rd.address for rd in rrset] for rrset in response.additional}
    assert glue == {"192-0-2-1.svc.example.com.": ["192.0.2.1"], v6: ["2001:db8::7"]}
    target, _ = ask(e, "192-0-2-1.svc.example.com")
    assert addresses(target) == ["192.0.2.1"]
    assert ask(e, "10-9-9-9.svc.example.com")[0].rcode() == dns.rcode.NXDOMAIN


def test_truncation_over_512_bytes_or_the_edns_size_and_tcp_gets_it_all() -> None:
    sites = Sites(*(site("big", f"10.0.{i // 250}.{i % 250 + 1}") for i in range(100)))
    e = engine([{"name": "big.example.com", "pools": ["big"]}], sites)
    plain, outcome = ask(e, "big.example.com")
    assert plain.flags & dns.flags.TC and not plain.answer and outcome.truncated
    assert len(outcome.wire) <= 512
    edns, outcome = ask(e, "big.example.com", payload=4096)  # 100 A records: ~1.7 KB > 1232
    assert edns.flags & dns.flags.TC and len(outcome.wire) <= 1232
    tcp, outcome = ask(e, "big.example.com", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(addresses(tcp)) == 100
    capped = engine([{"name": "big.example.com", "pools": ["big"], "answers": 8}], sites)
    small, _ = ask(capped, "big.example.com")
    assert not small.flags & dns.flags.TC and len(addresses(small)) == 8


def test_malformed_queries_get_formerr_and_the_rest_nothing() -> None:
    e = engine([{"name": "www.example.com", "pools": ["us"]}], two_sites())
    query = dns.message.make_query("www.example.com", "A")
    query.id = 0x1234
    wire = query.to_wire()
    broken = wire[:-3]  # the question cut short
    outcome = e.answer(broken, "192.0.2.9")
    assert outcome is not None and outcome.rcode == "FORMERR"
    ident, flags, *counts = struct.unpack("!6H", outcome.wire)
    assert ident == 0x1234 and flags & dns.flags.QR and flags & 0xF == dns.rcode.FORMERR
    assert flags & dns.flags.RD and counts == [0, 0, 0, 0]
    assert e.answer(wire[:11], "192.0.2.9") is None  # no header: nothing to answer
    assert e.answer(b"", "192.0.2.9") is None
    response = dns.message.make_response(query).to_wire()
    assert e.answer(response, "192.0.2.9") is None  # never answer an answer
    assert e.answer(response[:-3], "192.0.2.9") is None
    assert e.answer(wire + b"junk", "192.0.2.9").rcode == "FORMERR"  # type: ignore[union-attr]


def test_opcodes_edns_versions_and_question_counts() -> None:
    e = engine([{"name": "www.example.com", "pools": ["us"]}], two_sites())
    notify = dns.message.make_query("www.example.com", "A")
    notify.set_opcode(dns.opcode.NOTIFY)
    assert e.answer(notify.to_wire(), "192.0.2.9").rcode == "NOTIMP"  # type: ignore[union-attr]
    future = dns.message.make_query("www.example.com", "A", use_edns=1)
    outcome = e.answer(future.to_wire(), "192.0.2.9")
    assert outcome is not None and outcome.rcode == "BADVERS"
    empty = dns.message.make_query("www.example.com", "A")
    empty.question = []
    assert e.answer(empty.to_wire(), "192.0.2.9").rcode == "FORMERR"  # type: ignore[union-attr]
    chaos = dns.message.make_query("www.example.com", "TXT", rdclass="CH")
    assert e.answer(chaos.to_wire(), "192.0.2.9").rcode == "REFUSED"  # type: ignore[union-attr]


def test_outcome_says_what_the_log_and_metrics_need() -> None:
    e = engine(
        [{"name": "www.example.com", "policy": "failover", "pools": ["us", "eu"]}], two_sites()
    )
    _, outcome = ask(e, "www.example.com")
    assert (outcome.qname, outcome.qtype, outcome.rcode) == ("www.example.com", "A", "NOERROR")
    assert (outcome.record, outcome.policy) == ("www.example.com", "failover")
    assert outcome.answers == [("us", "192.0.2.1:80"), ("us", "192.0.2.2:80")]
