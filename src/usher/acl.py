"""IP allow/deny lists and the client address behind trusted proxies.

Networks are parsed once; decisions for an address are cached (bounded), since the same
clients come back. Deny wins over allow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Distinct client addresses whose decision is remembered, per list.
CACHE_SIZE = 4096


def parse_ip(text: str) -> Address | None:
    """An address from a peer name or header hop; an IPv4-mapped IPv6 address as IPv4."""
    try:
        address = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class NetworkSet:
    """Membership of an address in any of a list of networks."""

    __slots__ = ("contains", "networks")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(c, strict=False) for c in cidrs
        )
        self.contains = lru_cache(maxsize=CACHE_SIZE)(self._contains)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def _contains(self, ip: str) -> bool:
        address = parse_ip(ip)
        if address is None:
            return False
        return any(address.version == n.version and address in n for n in self.networks)


class IpList:
    """An allow list (None: everyone) and a deny list; `permits(ip)` decides."""

    __slots__ = ("_allow", "_deny", "permits")

    def __init__(self, allow: Sequence[str] | None, deny: Sequence[str]) -> None:
        self._allow = NetworkSet(allow) if allow is not None else None
        self._deny = NetworkSet(deny)
        self.permits = lru_cache(maxsize=CACHE_SIZE)(self._permits)

    @classmethod
    def build(cls, allow: Sequence[str] | None, deny: Sequence[str]) -> IpList | None:
        """None when the lists say nothing (no work per request)."""
        if allow is None and not deny:
            return None
        return cls(allow, deny)

    def _permits(self, ip: str) -> bool:
        if self._deny and self._deny.contains(ip):
            return False
        return self._allow is None or self._allow.contains(ip)


def forwarded_client(peer: str, headers: Iterable[tuple[bytes, bytes]], trusted: NetworkSet) -> str:
    """The client address of a request that came through `peer`.

    Only when the peer is a trusted proxy is X-Forwarded-For read: from its right end, each
    hop that is itself a trusted proxy is skipped, and the first that is not is the client.
    A hop that is not an address ends the walk at the last trusted one (it cannot be
    believed). All hops trusted: the leftmost.
    """
    if not trusted.contains(peer):
        return peer
    hops: list[str] = []
    for name, value in headers:
        if name.lower() == b"x-forwarded-for":
            hops.extend(h.strip() for h in value.decode("latin-1").split(","))
    client = peer
    for hop in reversed(hops):
        address = parse_ip(hop)
        if address is None:
            return client
        client = str(address)
        if not trusted.contains(client):
            return client
    return client
