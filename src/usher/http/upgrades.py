"""Protocol upgrades: which ones a route lets through, and whether a backend's 101 answers one.

A request's `Upgrade` header lists protocols (`websocket`, `h2c`, `name/version`). A route's
`upgrades` setting decides which of them reach the backend; the others are removed, and with
none left the request is forwarded as plain HTTP/1.1 (what nginx and HAProxy do with an h2c
upgrade). h2c is refused unless named: its tunnel would carry HTTP/2 requests that skip
routing, filters, limits and the access log. A 101 is relayed only when it switches to a
protocol the forwarded request asked for; any other 101 is the backend's error (a 502).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from usher.http.codec import Headers

ANY: Final = "*"  # in `upgrades`: every protocol but h2c
H2C: Final = b"h2c"


def protocol_name(token: bytes) -> bytes:
    """`WebSocket/13` -> `websocket`: upgrades are compared by name, case-insensitively."""
    return token.split(b"/", 1)[0].strip().lower()


class UpgradePolicy:
    """A route's compiled `upgrades` list."""

    __slots__ = ("any", "named")

    def __init__(self, allowed: Sequence[str]) -> None:
        self.any = ANY in allowed
        self.named = frozenset(name.lower().encode("latin-1") for name in allowed if name != ANY)

    def allows(self, name: bytes) -> bool:
        return name in self.named or (self.any and name != H2C)

    def forwarded(self, upgrade: bytes) -> bytes | None:
        """The `Upgrade` value to forward: the allowed protocols of the request's, in its
        order; None when none is allowed (then no upgrade is forwarded at all)."""
        if self.any and b"," not in upgrade and protocol_name(upgrade) != H2C:
            return upgrade  # the usual single `websocket`, as it came
        kept = [
            token.strip()
            for token in upgrade.split(b",")
            if token.strip() and self.allows(protocol_name(token))
        ]
        return b", ".join(kept) or None


DEFAULT_POLICY: Final = UpgradePolicy([ANY])


def switches_to_requested(requested: bytes | None, headers: Headers) -> bool:
    """Whether a 101 answer's `Upgrade` names only protocols the forwarded request offered
    (`requested`: the `Upgrade` value sent to the backend; None: no upgrade was asked for)."""
    if requested is None:
        return False
    offered = {protocol_name(token) for token in requested.split(b",")}
    switched = [
        protocol_name(token)
        for name, value in headers
        if name.lower() == b"upgrade"
        for token in value.split(b",")
        if token.strip()
    ]
    return bool(switched) and all(name in offered for name in switched)


def offers_h2c(upgrade: bytes | None) -> bool:
    return upgrade is not None and any(protocol_name(token) == H2C for token in upgrade.split(b","))


def with_h2c_settings(forwarded: Headers, request_headers: Headers) -> Headers:
    """The forwarded headers of an allowed h2c upgrade with the client's HTTP2-Settings put
    back: a hop-by-hop header, so dropped like the others, but without it the backend must
    not upgrade (RFC 7540 §3.2.1). Connection names it, as the client's did."""
    settings = [(n, v) for n, v in request_headers if n.lower() == b"http2-settings"]
    if not settings:
        return forwarded
    out = [
        (name, b"upgrade, HTTP2-Settings") if name == b"Connection" else (name, value)
        for name, value in forwarded
    ]
    out.extend(settings)
    return out
