"""The authoritative DNS engine, sans I/O: a query's wire bytes and the client's address in, the
response's wire bytes out, from the config's zones and records and a snapshot of the sites'
backends (`Sites`). The server around it moves datagrams and TCP frames and applies RRL.

What it answers:
- a query it cannot parse: FORMERR when the 12-byte header is readable, else nothing; a
  message that is itself a response: nothing (no answer loops);
- opcode other than QUERY: NOTIMP; EDNS version above 0: BADVERS; not exactly one question:
  FORMERR;
- a name outside the zones: REFUSED; inside a zone: SOA and NS at the apex, A/AAAA (and SRV
  with its targets' addresses) for the records, NODATA (SOA in authority) for other types and
  empty non-terminals, NXDOMAIN (SOA in authority) for the rest; authoritative (AA);
- over UDP, an answer larger than 512 bytes (or the client's EDNS size, up to 1232) goes out
  empty with TC set, so that the client asks again over TCP.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from usher.dns.policies import Candidate, CompiledRecord, Network, Selector, Sites

if TYPE_CHECKING:
    from usher.config import DnsSettings

HEADER_SIZE: Final = 12
UDP_MIN: Final = 512
# The largest UDP answer we send whatever the client says: the DNS flag day 2020 size, which
# avoids IP fragmentation on common paths.
UDP_MAX: Final = 1232
TCP_MAX: Final = 65535
# SOA timers (refresh, retry, expire): nothing transfers these zones, so they only need to be sane.
SOA_TIMERS: Final = (3600, 600, 86400)

_IN = dns.rdataclass.IN
_A = dns.rdatatype.A
_AAAA = dns.rdatatype.AAAA
_SRV = dns.rdatatype.SRV
_ANY = dns.rdatatype.ANY


@dataclass(slots=True)
class Outcome:
    """One query answered: the response, and what the log and metrics say about it."""

    wire: bytes
    rcode: str
    qname: str = ""
    qtype: str = ""
    record: str = ""  # the configured record (or zone apex) it concerned; "" for none
    policy: str = ""
    answers: list[tuple[str, str]] = field(default_factory=list)  # (pool, address)
    truncated: bool = False
    message: dns.message.Message | None = None  # None for the raw FORMERR


@dataclass(frozen=True, slots=True)
class _Zone:
    origin: dns.name.Name
    soa: dns.rrset.RRset
    ns: dns.rrset.RRset


def _ipv4(c: Candidate) -> bool:
    return ":" not in c.host


def _ipv6(c: Candidate) -> bool:
    return ":" in c.host


def _any_family(c: Candidate) -> bool:
    return True


def target_label(host: str) -> str:
    """The DNS label naming a backend's address under its record (an SRV target):
    `10-0-0-1`, or the IPv6 address written out in full with `-` for `:`."""
    ip = ipaddress.ip_address(host)
    return ip.exploded.replace(":", "-").replace(".", "-")


class Engine:
    """Answers queries for one `dns` listener's settings; `sites(pool)` gives each pool's
    backends as they are now. `serial` is the zones' SOA serial (it changes on reload)."""

    def __init__(
        self,
        settings: DnsSettings,
        sites: Sites,
        *,
        rng: random.Random | None = None,
        serial: int = 1,
    ) -> None:
        self.settings = settings
        self.sites = sites
        self.selector = Selector(rng or random.Random())
        self.ttl = int(settings.ttl)
        self.zones = [self._zone(z, serial) for z in settings.zones]
        # Longest first: the most specific zone holds a name.
        self.zones.sort(key=lambda z: len(z.origin.labels), reverse=True)
        self.records = {
            dns.name.from_text(r.name): CompiledRecord.build(r) for r in settings.records
        }
        self.nonterminals = {
            parent
            for name in self.records
            for parent in _parents(name)
            if any(parent.is_subdomain(z.origin) for z in self.zones)
        }

    def _zone(self, name: str, serial: int) -> _Zone:
        origin = dns.name.from_text(name)
        servers = self.settings.nameservers or [f"ns.{name}"]
        ns = dns.rrset.from_rdata_list(
            origin,
            self.ttl,
            [_rdata(dns.rdatatype.NS, f"{server}.") for server in servers],
        )
        # The last field is the negative-caching TTL (RFC 2308).
        timers = " ".join(str(t) for t in (serial & 0xFFFFFFFF, *SOA_TIMERS, self.ttl))
        soa = _rdata(dns.rdatatype.SOA, f"{servers[0]}. hostmaster.{name}. {timers}")
        return _Zone(origin, dns.rrset.from_rdata_list(origin, self.ttl, [soa]), ns)

    # The entry point

    def answer(self, wire: bytes, client: str, *, tcp: bool = False) -> Outcome | None:
        """The response to `wire` from `client` (an IP address), or None to send nothing."""
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many kinds for a bad message: all are FORMERR
            return _formerr(wire)
        if query.flags & dns.flags.QR:
            return None
        response = dns.message.make_response(query, our_payload=UDP_MAX)
        response.flags &= ~dns.flags.RA
        outcome = Outcome(b"", "NOERROR", message=response)
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
        elif query.edns > 0:
            response.set_rcode(dns.rcode.BADVERS)
        elif len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
        else:
            self._resolve(query, response, client, outcome)
        outcome.rcode = dns.rcode.to_text(response.rcode())
        limit = TCP_MAX if tcp else max(UDP_MIN, min(query.payload, UDP_MAX))
        if query.edns < 0 and not tcp:
            limit = UDP_MIN
        outcome.wire = self._to_wire(response, limit, outcome)
        return outcome

    def truncated(self, outcome: Outcome) -> bytes:
        """The empty TC answer that tells a client to ask again over TCP (RRL's slip)."""
        response = outcome.message
        assert response is not None
        return self._to_wire(response, 0, outcome)

    def _to_wire(self, response: dns.message.Message, limit: int, outcome: Outcome) -> bytes:
        if limit:
            try:
                # In our order (the policy's: rotation, round trips), not shuffled.
                return response.to_wire(max_size=limit, want_shuffle=False)
            except dns.exception.TooBig:
                pass
        response.answer.clear()
        response.authority.clear()
        response.additional.clear()
        response.flags |= dns.flags.TC
        outcome.truncated = True
        return response.to_wire(want_shuffle=False)

    # Resolution

    def _resolve(
        self,
        query: dns.message.Message,
        response: dns.message.Message,
        client: str,
        outcome: Outcome,
    ) -> None:
        question = query.question[0]
        qname, qtype = question.name, question.rdtype
        outcome.qname = qname.to_text(omit_final_dot=True)
        outcome.qtype = dns.rdatatype.to_text(qtype)
        zone = next((z for z in self.zones if qname.is_subdomain(z.origin)), None)
        if zone is None or question.rdclass != _IN:
            response.set_rcode(dns.rcode.REFUSED)
            return
        response.flags |= dns.flags.AA
        record = self.records.get(qname)
        if qname == zone.origin:
            outcome.record = zone.origin.to_text(omit_final_dot=True)
            if qtype in (dns.rdatatype.SOA, _ANY):
                response.answer.append(_renamed(zone.soa, qname))
            if qtype in (dns.rdatatype.NS, _ANY):
                response.answer.append(_renamed(zone.ns, qname))
            if record is None:
                if not response.answer:
                    response.authority.append(zone.soa)
                return
        if record is not None:
            self._record(query, response, record, client, outcome)
        elif self._target(response, qname, qtype, outcome):
            pass
        elif qname in self.nonterminals:
            response.authority.append(zone.soa)  # NODATA: the name exists, with no data
        else:
            response.set_rcode(dns.rcode.NXDOMAIN)
            response.authority.append(zone.soa)
        if not response.answer and not response.authority:
            response.authority.append(zone.soa)

    def _record(
        self,
        query: dns.message.Message,
        response: dns.message.Message,
        record: CompiledRecord,
        client: str,
        outcome: Outcome,
    ) -> None:
        config = record.config
        qname, qtype = query.question[0].name, query.question[0].rdtype
        outcome.record, outcome.policy = config.name, config.policy
        if qtype not in (_A, _AAAA, _SRV, _ANY):
            return  # NODATA; the SOA goes in authority
        family = _family(qtype)
        subnet = _client_subnet(query, client)
        if config.policy == "geo" and subnet is not None and subnet[1]:
            _echo_ecs(response, subnet[0], scope=subnet[0].prefixlen)
        chosen, healthy = self.selector.select(
            record, self.sites, subnet[0] if subnet else None, family
        )
        # Every site down (no address of this family at all is NODATA, not a failure).
        if not healthy and chosen and config.when_all_down == "servfail":
            response.flags &= ~dns.flags.AA
            response.set_rcode(dns.rcode.SERVFAIL)
            return
        ttl = int(config.ttl) if config.ttl is not None else self.ttl
        outcome.answers = [(c.pool, c.label) for c in chosen]
        if qtype == _SRV:
            self._srv(response, qname, chosen, ttl)
            return
        _add_addresses(response.answer, qname, chosen, ttl)

    def _srv(
        self,
        response: dns.message.Message,
        qname: dns.name.Name,
        chosen: Sequence[Candidate],
        ttl: int,
    ) -> None:
        if not chosen:
            return
        rdatas = []
        for c in chosen:
            target = dns.name.Name((target_label(c.host).encode(), *qname.labels))
            rdatas.append(_rdata(_SRV, f"0 {c.weight} {c.port} {target}"))
            _add_addresses(response.additional, target, [c], ttl)
        response.answer.append(dns.rrset.from_rdata_list(qname, ttl, rdatas))

    def _target(
        self,
        response: dns.message.Message,
        qname: dns.name.Name,
        qtype: int,
        outcome: Outcome,
    ) -> bool:
        """A name an SRV answer points at (`<address label>.<record>`): its address, whatever
        the health (the SRV answer chose it; a resolver may ask for it later)."""
        if len(qname.labels) < 2:
            return False
        parent = qname.parent()
        record = self.records.get(parent)
        if record is None:
            return False
        label = qname.labels[0].decode("ascii", "replace").lower()
        for pool in record.all_pools():
            for c in self.sites(pool):
                if target_label(c.host) == label:
                    outcome.record, outcome.policy = record.config.name, "srv_target"
                    if qtype in (_A, _AAAA, _ANY) and _family(qtype)(c):
                        ttl = record.config.ttl
                        _add_addresses(
                            response.answer, qname, [c], self.ttl if ttl is None else int(ttl)
                        )
                        outcome.answers = [(c.pool, c.label)]
                    return True
        return False


def _parents(name: dns.name.Name) -> list[dns.name.Name]:
    found = []
    while len(name.labels) > 1:
        name = name.parent()
        found.append(name)
    return found


def _renamed(rrset: dns.rrset.RRset, name: dns.name.Name) -> dns.rrset.RRset:
    """The zone's rrset under the query's spelling of the name (case kept, as asked)."""
    return dns.rrset.from_rdata_list(name, rrset.ttl, list(rrset))


def _add_addresses(
    section: list[dns.rrset.RRset], name: dns.name.Name, chosen: Sequence[Candidate], ttl: int
) -> None:
    # Distinct addresses only: two backends of one host differ by port alone.
    hosts = list(dict.fromkeys(c.host for c in chosen))
    for rdtype, wanted in (
        (_A, [h for h in hosts if ":" not in h]),
        (_AAAA, [h for h in hosts if ":" in h]),
    ):
        if wanted:
            rdatas = [_rdata(rdtype, host) for host in wanted]
            section.append(dns.rrset.from_rdata_list(name, ttl, rdatas))


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(_IN, rdtype, text)


def _family(qtype: int) -> Callable[[Candidate], bool]:
    """Which backends a query type answers: IPv4 for A, IPv6 for AAAA, both for SRV and ANY."""
    if qtype == _A:
        return _ipv4
    if qtype == _AAAA:
        return _ipv6
    return _any_family


def _client_subnet(query: dns.message.Message, client: str) -> tuple[Network, bool] | None:
    """The client's network, and whether it came from EDNS Client Subnet (else it is the
    source address). A source prefix of 0 means the resolver asks us not to use it."""
    for option in query.options:
        if isinstance(option, dns.edns.ECSOption) and option.srclen > 0:
            try:
                network = ipaddress.ip_network(f"{option.address}/{option.srclen}", strict=False)
            except ValueError:
                break
            return network, True
    try:
        ip = ipaddress.ip_address(client)
    except ValueError:
        return None
    return ipaddress.ip_network(ip), False


def _echo_ecs(response: dns.message.Message, network: Network, *, scope: int) -> None:
    """RFC 7871: the answer carries the option back, its scope saying how far it applies."""
    if response.edns < 0:
        return
    option = dns.edns.ECSOption(str(network.network_address), network.prefixlen, scope)
    response.use_edns(0, response.ednsflags, response.payload, options=[option])


def _formerr(wire: bytes) -> Outcome | None:
    """FORMERR for a message whose header is readable (and that is not a response)."""
    if len(wire) < HEADER_SIZE:
        return None
    ident, flags = struct.unpack_from("!HH", wire)
    if flags & dns.flags.QR:
        return None
    opcode_and_rd = flags & 0x7900  # the opcode bits and RD, echoed
    header = struct.pack(
        "!HHHHHH", ident, dns.flags.QR | opcode_and_rd | dns.rcode.FORMERR, 0, 0, 0, 0
    )
    return Outcome(header, "FORMERR")
