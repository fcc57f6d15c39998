"""Header rules of a forwarding proxy: hop-by-hop removal, X-Forwarded-*, Via, configured rewrites.

Everything works on raw bytes: names are compared lower-cased, values are passed unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from usher.http.codec import Headers

# Headers that describe one connection, not the message (RFC 9110 §7.6.1), plus the
# non-standard Proxy-Connection; any Proxy-* header is dropped as well.
HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    }
)
# Set by usher from what it saw itself; a client's own values are not trusted.
FORWARDED_SET: Final = frozenset({b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip"})
VIA_REQUEST: Final = {b"1.1": b"1.1 usher", b"1.0": b"1.0 usher"}


class HeaderRules:
    """A compiled `request_headers` / `response_headers` rewrite: remove, then set."""

    __slots__ = ("drop", "set")

    def __init__(self, set_headers: Mapping[str, str], remove: Sequence[str]) -> None:
        self.set: Headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in set_headers.items()
        ]
        # Setting a header replaces every copy the message had.
        self.drop = frozenset(n.lower().encode("latin-1") for n in remove) | frozenset(
            name.lower() for name, _ in self.set
        )

    def apply(self, headers: Headers) -> Headers:
        drop = self.drop
        out = [h for h in headers if h[0].lower() not in drop]
        out.extend(self.set)
        return out


# Connection may not make these hop-by-hop: dropping them would unframe the body (smuggling)
# or send the request to another virtual host.
NEVER_CONNECTION_SPECIFIC: Final = frozenset({b"host", b"content-length"})


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The header names listed in Connection, which are hop-by-hop too."""
    tokens: set[bytes] = set()
    for name, value in headers:
        if name.lower() == b"connection":
            tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens - NEVER_CONNECTION_SPECIFIC)


def _is_hop_by_hop(lname: bytes, listed: frozenset[bytes]) -> bool:
    return lname in HOP_BY_HOP or lname.startswith(b"proxy-") or lname in listed


def forward_request_headers(
    headers: Headers,
    *,
    version: bytes,
    host: bytes,
    client_ip: bytes,
    scheme: bytes,
    chunked: bool,
    upgrade: bytes | None,
    real_ip: bytes | None = None,
) -> Headers:
    """The headers a backend receives for a client's request. `client_ip` is the peer, added to
    X-Forwarded-For; `real_ip` the client behind trusted proxies (default: the peer)."""
    listed = connection_tokens(headers)
    out: Headers = []
    xff = b""
    via = b""
    codings = b""
    for name, value in headers:
        lname = name.lower()
        if lname == b"transfer-encoding":
            codings = codings + b", " + value if codings else value
            continue
        if _is_hop_by_hop(lname, listed) or lname in FORWARDED_SET:
            continue
        if lname == b"x-forwarded-for":
            xff = xff + b", " + value if xff else value
        elif lname == b"via":
            via = via + b", " + value if via else value
        else:
            out.append((name, value))
    out.append((b"X-Forwarded-For", xff + b", " + client_ip if xff else client_ip))
    out.append((b"X-Forwarded-Proto", scheme))
    if host:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Real-IP", client_ip if real_ip is None else real_ip))
    mine = VIA_REQUEST.get(version, b"1.1 usher")
    out.append((b"Via", via + b", " + mine if via else mine))
    if chunked:
        # The body is re-chunked, but codings before chunked (gzip, chunked) stay as they are.
        out.append((b"Transfer-Encoding", codings or b"chunked"))
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    return out


def transfer_codings(headers: Headers) -> bytes:
    """The Transfer-Encoding of a message, all its headers joined (b"" when none)."""
    return b", ".join(v for n, v in headers if n.lower() == b"transfer-encoding")


def forward_response_headers(
    headers: Headers,
    *,
    version: bytes,
    upgrade: bool,
    strip: frozenset[bytes] = frozenset(),
) -> Headers:
    """A backend's response headers without the hop-by-hop ones (framing is added by the caller)
    and without those in `strip` (lower-case names: Server, X-Powered-By by default).

    For a 101 answer the Upgrade header is kept: it names the protocol switched to.
    """
    listed = connection_tokens(headers)
    out: Headers = []
    via = b""
    upgrade_value = b""
    for name, value in headers:
        lname = name.lower()
        if lname == b"content-length":
            continue  # re-added by the caller, which decides the framing
        if lname == b"upgrade":
            upgrade_value = value
            continue
        if _is_hop_by_hop(lname, listed) or lname in strip:
            continue
        if lname == b"via":
            via = via + b", " + value if via else value
        else:
            out.append((name, value))
    mine = VIA_REQUEST.get(version, b"1.1 usher")
    out.append((b"Via", via + b", " + mine if via else mine))
    if upgrade and upgrade_value:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade_value))
    return out
