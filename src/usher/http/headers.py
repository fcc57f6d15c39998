"""Header rules of a forwarding proxy: hop-by-hop removal, X-Forwarded-*, Via, configured rewrites.

Everything works on raw bytes: names are compared lower-cased, values are passed unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

from usher.http.codec import CHUNKED, Headers

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

    __slots__ = ("drop", "lengths", "set")

    def __init__(self, set_headers: Mapping[str, str], remove: Sequence[str]) -> None:
        self.set: Headers = [
            (k.encode("latin-1"), v.encode("latin-1")) for k, v in set_headers.items()
        ]
        # Setting a header replaces every copy the message had.
        self.drop = frozenset(n.lower().encode("latin-1") for n in remove) | frozenset(
            name.lower() for name, _ in self.set
        )
        # A name of another length cannot be dropped: most headers pass without a lower().
        self.lengths = frozenset(len(name) for name in self.drop)

    def apply(self, headers: Headers) -> Headers:
        drop, lengths = self.drop, self.lengths
        out = [h for h in headers if len(h[0]) not in lengths or h[0].lower() not in drop]
        out.extend(self.set)
        return out


# Connection may not make these hop-by-hop: dropping them would unframe the body (smuggling)
# or send the request to another virtual host.
NEVER_CONNECTION_SPECIFIC: Final = frozenset({b"host", b"content-length"})


def connection_tokens(headers: Headers) -> frozenset[bytes]:
    """The header names listed in Connection, which are hop-by-hop too."""
    return _listed([value for name, value in headers if name.lower() == b"connection"])


def _listed(values: list[bytes]) -> frozenset[bytes]:
    tokens: set[bytes] = set()
    for value in values:
        tokens.update(t.strip().lower() for t in value.split(b","))
    return frozenset(tokens - NEVER_CONNECTION_SPECIFIC)


_NOTHING: Final[frozenset[bytes]] = frozenset()
_CONNECTION_OPTIONS: Final = frozenset({b"close", b"keep-alive"})


def _named(values: list[bytes]) -> frozenset[bytes]:
    """The other headers the Connection header(s) name, leaving out the ones that are dropped
    anyway (hop-by-hop) and the `close` / `keep-alive` options: for the common
    `Connection: close` or `keep-alive` alone, nothing, without splitting."""
    if len(values) == 1 and values[0].lower() in _CONNECTION_OPTIONS:
        return _NOTHING
    return _listed(values) - HOP_BY_HOP - _CONNECTION_OPTIONS


def _drop_listed(out: Headers, listed: frozenset[bytes]) -> Headers:
    """Remove the headers a Connection header named."""
    return [h for h in out if h[0].lower() not in listed] if listed else out


# One set lookup per header on the common path: a name in here needs a closer look.
_REQUEST_SPECIAL: Final = (
    HOP_BY_HOP
    | FORWARDED_SET
    | {
        b"x-forwarded-for",
        b"via",
        b"content-length",
        # Not framing for usher, but framing for a backend that reads `_` as `-` (CGI, WSGI,
        # PHP): dropped, as nginx drops names with underscores by default.
        b"transfer_encoding",
        b"content_length",
    }
)
_RESPONSE_SPECIAL: Final = HOP_BY_HOP | {b"content-length", b"via"}


def forward_request_headers(
    headers: Headers,
    *,
    version: bytes,
    host: bytes,
    client_ip: bytes,
    scheme: bytes,
    chunked: bool,
    upgrade: bytes | None,
    content_length: int | None,
    real_ip: bytes | None = None,
) -> Headers:
    """The headers a backend receives for a client's request. `client_ip` is the peer, added to
    X-Forwarded-For; `real_ip` the client behind trusted proxies (default: the peer).

    The framing is usher's own: `Content-Length` says `content_length` (the number usher
    parsed, so `010` goes on as `10`) where the client's header was, and a chunked body gets
    `Transfer-Encoding: chunked` whatever the client's spelling (`CHUNKED`, `,chunked`)."""
    out: Headers = []
    connection: list[bytes] = []
    xff = b""
    via = b""
    for name, value in headers:
        lname = name.lower()
        if lname in _REQUEST_SPECIAL:
            if lname == b"content-length":
                if content_length is not None:
                    out.append((b"Content-Length", b"%d" % content_length))
                continue
            if lname == b"x-forwarded-for":
                xff = xff + b", " + value if xff else value
            elif lname == b"via":
                via = via + b", " + value if via else value
            elif lname == b"connection":
                connection.append(value)
            continue  # hop-by-hop, or an X-Forwarded-* usher sets itself
        if lname.startswith(b"proxy-"):
            continue
        out.append((name, value))
    if connection:
        listed = _named(connection)
        out = _drop_listed(out, listed)
        xff = b"" if b"x-forwarded-for" in listed else xff
        via = b"" if b"via" in listed else via
    out.append((b"X-Forwarded-For", xff + b", " + client_ip if xff else client_ip))
    out.append((b"X-Forwarded-Proto", scheme))
    if host:
        out.append((b"X-Forwarded-Host", host))
    out.append((b"X-Real-IP", client_ip if real_ip is None else real_ip))
    mine = VIA_REQUEST.get(version, b"1.1 usher")
    out.append((b"Via", via + b", " + mine if via else mine))
    if chunked:
        out.append((b"Transfer-Encoding", CHUNKED))
    if upgrade is not None:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade))
    return out


# Never taken from a request's trailers: what frames, routes or describes the connection, and
# what usher writes itself (RFC 9110 §6.5.1 forbids the first ones in trailers anyway). A
# backend that merges trailers into the headers would otherwise believe a client's X-Real-IP.
_TRAILERS_REFUSED: Final = (
    HOP_BY_HOP
    | _REQUEST_SPECIAL
    | {b"trailer", b"host", b"forwarded", b"expect", b"max-forwards", b"authorization"}
)


def forward_trailers(trailers: Headers, controlled: frozenset[bytes]) -> Headers:
    """The trailers of a chunked request that a backend receives: not the hop-by-hop ones, no
    framing, routing or `X-Forwarded-*` / `Proxy-*` field, and none of `controlled` (names
    usher sets on this listener or route: the client-cert and request-id headers, rewrites).
    Names are compared as CGI reads them (lower-case, `_` as `-`), so `controlled` holds them
    that way: `X_Real_IP` is refused as `X-Real-IP` is."""
    out: Headers = []
    for name, value in trailers:
        key = name.lower().replace(b"_", b"-")
        if (
            key in _TRAILERS_REFUSED
            or key in controlled
            or key.startswith((b"x-forwarded-", b"proxy-"))
        ):
            continue
        out.append((name, value))
    return out


def expects_continue(headers: Headers) -> bool:
    """Whether a request says `Expect: 100-continue` (the client waits before its body)."""
    for name, value in headers:
        if len(name) == 6 and name.lower() == b"expect" and b"100-continue" in value.lower():
            return True
    return False


def relayed_transfer_encoding(codings: tuple[bytes, ...]) -> tuple[bytes, bool]:
    """The Transfer-Encoding of a response body relayed to an HTTP/1.1 client, given the
    backend's codings, and whether usher chunks the body itself (else: relays it as it came,
    to the end of the connection).

    Codings other than chunked (`gzip`) are part of what the body is: the client must see
    them. A body the backend chunked reaches usher de-chunked and is chunked again; one with
    no chunked coding gets chunked added last. chunked before another coding (`chunked,
    gzip`) cannot be undone by usher and may not be applied twice (RFC 9112 §7): that body,
    close-delimited by RFC 9112 §6.3, goes on as it is, under the backend's codings."""
    if not codings:
        return CHUNKED, True
    if codings[-1] == CHUNKED:
        return b", ".join(codings), True
    if CHUNKED not in codings:
        return b", ".join((*codings, CHUNKED)), True
    return b", ".join(codings), False


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
    out: Headers = []
    connection: list[bytes] = []
    via = b""
    upgrade_value = b""
    for name, value in headers:
        lname = name.lower()
        if lname in _RESPONSE_SPECIAL:
            # Content-Length is re-added by the caller, which decides the framing.
            if lname == b"upgrade":
                upgrade_value = value
            elif lname == b"via":
                via = via + b", " + value if via else value
            elif lname == b"connection":
                connection.append(value)
            continue
        if lname.startswith(b"proxy-") or lname in strip:
            continue
        out.append((name, value))
    if connection:
        listed = _named(connection)
        out = _drop_listed(out, listed)
        via = b"" if b"via" in listed else via
    mine = VIA_REQUEST.get(version, b"1.1 usher")
    out.append((b"Via", via + b", " + mine if via else mine))
    if upgrade and upgrade_value:
        out.append((b"Connection", b"upgrade"))
        out.append((b"Upgrade", upgrade_value))
    return out


def header_key(name: bytes) -> bytes:
    """A header name compared the way a backend's gateway reads it: CGI, WSGI and PHP read
    X_Client_Cert_Subject and X-Client-Cert-Subject as the same HTTP_X_CLIENT_CERT_SUBJECT."""
    return name.lower().replace(b"_", b"-")
