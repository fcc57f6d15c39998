"""IP allow/deny lists and the client address behind trusted proxies."""

from __future__ import annotations

import pytest

from usher.acl import IpList, NetworkSet, forwarded_client


@pytest.mark.parametrize(
    ("ip", "permitted"),
    [
        ("10.1.2.3", True),
        ("10.6.6.7", False),  # deny wins over allow
        ("192.168.1.1", False),  # not in allow
        ("2001:db8::5", True),
        ("2001:db8:6::1", False),
        ("::ffff:10.1.2.3", True),  # IPv4-mapped IPv6 is IPv4
        ("not-an-ip", False),
    ],
)
def test_allow_and_deny(ip: str, permitted: bool) -> None:
    acl = IpList(["10.0.0.0/8", "2001:db8::/32"], ["10.6.6.0/24", "2001:db8:6::/48"])
    assert acl.permits(ip) is permitted


def test_deny_only_permits_everyone_else() -> None:
    acl = IpList(None, ["127.0.0.1/32"])
    assert not acl.permits("127.0.0.1")
    assert acl.permits("127.0.0.2")
    assert acl.permits("::1")


def test_empty_lists_build_nothing() -> None:
    assert IpList.build(None, []) is None
    assert IpList.build([], []) is not None  # allow nobody is a real list


TRUSTED = NetworkSet(["10.0.0.0/8", "::1/128"])


def xff(*values: str) -> list[tuple[bytes, bytes]]:
    return [(b"X-Forwarded-For", v.encode()) for v in values]


def test_untrusted_peer_is_the_client_whatever_it_says() -> None:
    assert forwarded_client("203.0.113.9", xff("1.2.3.4"), TRUSTED) == "203.0.113.9"


def test_rightmost_untrusted_hop_is_the_client() -> None:
    headers = xff("6.6.6.6, 1.2.3.4", "10.0.0.2")
    assert forwarded_client("10.0.0.1", headers, TRUSTED) == "1.2.3.4"


def test_all_hops_trusted_gives_the_leftmost() -> None:
    assert forwarded_client("10.0.0.1", xff("10.0.0.3, 10.0.0.2"), TRUSTED) == "10.0.0.3"


def test_no_header_from_a_trusted_peer_gives_the_peer() -> None:
    assert forwarded_client("::1", [], TRUSTED) == "::1"


def test_garbage_hop_stops_at_the_last_trusted_one() -> None:
    assert forwarded_client("10.0.0.1", xff("1.2.3.4, garbage"), TRUSTED) == "10.0.0.1"
