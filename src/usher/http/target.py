"""A request's target and Host, checked and normalised before anything reads them: routing,
filters, `prefix_rewrite` and the backend's request line all see the same origin-form path.

Pure functions on bytes. Each refusal is a `ClientError(400, why)`. What is normalised and why
is in docs/security.md ("Request targets and Host").
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final, Literal

from usher.errors import ClientError
from usher.http.codec import Headers

# What a `%2F` in a path becomes: refused (400), a `/` like any other, or kept encoded as part
# of its segment (for backends that route on it, e.g. GitLab's `projects/group%2Fname`).
EncodedSlashes = Literal["refuse", "decode", "keep"]

# RFC 3986 §2.3: decoding these never changes what a URI means (§6.2.2.2).
_UNRESERVED: Final = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
)
_PERCENT: Final = re.compile(rb"%(?:([0-9A-Fa-f]{2})|)")
# A host name (letters, digits, `-`, `_`, `~`, dots between labels, one trailing dot) or an
# IP literal, then an optional port. Stricter than RFC 3986's reg-name on purpose: a space, a
# comma, `@` or `/` in a Host is an attack on whoever reads it next, never a real name.
_HOST: Final = re.compile(
    rb"(?P<name>[A-Za-z0-9_~-]+(?:\.[A-Za-z0-9_~-]+)*\.?|\[(?P<ip6>[0-9A-Fa-f:.]+)\])"
    rb"(?::(?P<port>[0-9]{1,5}))?"
)
_ABSOLUTE: Final = re.compile(rb"(?i:https?)://(?P<authority>[^/?#]*)(?P<rest>.*)", re.DOTALL)
# An origin-form target with nothing to decode, merge or resolve (segments neither empty nor
# starting with a dot nor holding a % or a backslash) and no fragment: most requests, checked
# in one call.
_PLAIN_ORIGIN: Final = re.compile(
    rb"/(?:[^/%?#.\\][^/%?#\\]*(?:/[^/%?#.\\][^/%?#\\]*)*/?)?(?:\?[^#]*)?", re.DOTALL
)
_FRAGMENT: Final = "a request target may not carry a #fragment"
# Host values already checked, and what they became: a busy listener sees few distinct ones.
_CHECKED_HOSTS: Final[dict[bytes, bytes]] = {}
_CHECKED_HOSTS_MAX: Final = 1024


def request_target(
    method: bytes,
    target: bytes,
    version: bytes,
    host: bytes,
    encoded_slashes: EncodedSlashes,
) -> tuple[bytes, bytes]:
    """(target, host) for a request as received: the target in origin-form with its path
    normalised (or `*` for `OPTIONS *`), the host from an absolute-form target's authority
    (RFC 9112 §3.2.2: it replaces Host) or else the Host header, checked and lower-cased.
    The host is b"" when an HTTP/1.0 request named none (the caller supplies one)."""
    if target[:1] == b"/":
        return normalise_origin(target, encoded_slashes), _header_host(host, version)
    if target.find(b"#") >= 0:
        raise ClientError(400, _FRAGMENT)
    if target == b"*":
        if method != b"OPTIONS":
            raise ClientError(400, "only OPTIONS may have the target *")
        return target, _header_host(host, version)
    absolute = _ABSOLUTE.fullmatch(target)
    if absolute is None:
        raise ClientError(400, "the request target must be a path or an http(s) URL")
    authority = absolute["authority"]
    if not authority:
        raise ClientError(400, "the request target's URL has no host")
    if b"@" in authority:
        raise ClientError(400, "the request target's URL may not carry user information")
    rest = absolute["rest"]
    if not rest or rest[:1] == b"?":
        # RFC 9112 §3.2.4: an empty path is `*` for OPTIONS, `/` for the rest.
        if not rest and method == b"OPTIONS":
            return b"*", normalise_host(authority)
        rest = b"/" + rest
    return normalise_origin(rest, encoded_slashes), normalise_host(authority)


def _header_host(host: bytes, version: bytes) -> bytes:
    if host:
        return normalise_host(host)
    if version == b"1.0":
        return b""  # HTTP/1.0 has no Host: the caller puts in the one its listener implies
    raise ClientError(400, "an HTTP/1.1 request needs a non-empty Host")


def normalise_origin(target: bytes, encoded_slashes: EncodedSlashes) -> bytes:
    """`path[?query]` with the path normalised and the query as it came."""
    if _PLAIN_ORIGIN.fullmatch(target) is not None:
        return target
    # find(), not `in`: on CPython 3.11 `bytes in bytes` first tries the operand as an int and
    # raises (then clears) a TypeError, some 1,800 instructions each time.
    if target.find(b"#") >= 0:
        raise ClientError(400, _FRAGMENT)
    path, mark, query = target.partition(b"?")
    return normalise_path(path, encoded_slashes) + mark + query


def normalise_path(path: bytes, encoded_slashes: EncodedSlashes) -> bytes:
    """An absolute path as nginx sees it before matching a location: unreserved characters
    percent-decoded (`%2e` is `.`, `%41` is `A`), other escapes kept with upper-case hex,
    `%2F` as `encoded_slashes` says, repeated slashes merged and `.`/`..` segments resolved
    (RFC 3986 §5.2.4). A `..` that would climb above the root is refused, and so is a raw
    backslash, which no URI may hold and some backends (IIS, WHATWG URL parsers) read as `/`."""
    if path.find(b"\\") >= 0:
        raise ClientError(400, "a backslash in the path")
    if path.find(b"%") >= 0:
        path = _decode(path, encoded_slashes)
    segments = path.split(b"/")[1:]
    kept: list[bytes] = []
    for segment in segments:
        if segment == b".." and not kept:
            raise ClientError(400, "the path climbs above the root with ..")
        if segment == b"..":
            kept.pop()
        elif segment and segment != b".":
            kept.append(segment)
    # `/a/`, `/a/.` and `/a/b/..` name a directory: the trailing slash stays.
    trailing = bool(kept) and segments[-1] in (b"", b".", b"..")
    return b"/" + b"/".join(kept) + (b"/" if trailing else b"")


def _decode(path: bytes, encoded_slashes: EncodedSlashes) -> bytes:
    def one(match: re.Match[bytes]) -> bytes:
        digits = match[1]
        if digits is None:
            raise ClientError(400, "a % in the path is not followed by two hex digits")
        byte = int(digits, 16)
        if byte in _UNRESERVED:
            return bytes((byte,))
        if byte == 0x2F:
            if encoded_slashes == "refuse":
                raise ClientError(400, "an encoded slash (%2F) in the path")
            if encoded_slashes == "decode":
                return b"/"
        elif byte == 0:
            raise ClientError(400, "an encoded NUL (%00) in the path")
        return b"%%%02X" % byte

    return _PERCENT.sub(one, path)


def normalise_host(host: bytes) -> bytes:
    """A Host value (or a URL's authority) checked, lower-cased and without a trailing dot
    (`Example.COM.:8080` -> `example.com:8080`), so that routes and backends read one name."""
    checked = _CHECKED_HOSTS.get(host)
    if checked is not None:
        return checked
    if len(_CHECKED_HOSTS) >= _CHECKED_HOSTS_MAX:
        _CHECKED_HOSTS.clear()  # a client making up names: start over rather than grow
    _CHECKED_HOSTS[host] = checked = _checked_host(host)
    return checked


def _checked_host(host: bytes) -> bytes:
    match = _HOST.fullmatch(host)
    if match is None:
        raise ClientError(400, "invalid Host: " + _shown(host))
    ip6, port = match["ip6"], match["port"]
    if port is not None and int(port) > 65535:
        raise ClientError(400, "invalid Host (port): " + _shown(host))
    if ip6 is not None:
        try:
            ipaddress.IPv6Address(ip6.decode("ascii"))
        except ValueError:
            raise ClientError(400, "invalid Host (IPv6 address): " + _shown(host)) from None
    name = match["name"]
    if name.endswith(b"."):
        host = name[:-1] + host[len(name) :]
    return host.lower()


def _shown(value: bytes) -> str:
    """A client's bytes, safe to put in an error page (printable ASCII, at most 64)."""
    text = value[:64].decode("ascii", "backslashreplace")
    return repr(text) if text else "empty"


def authority(address: object) -> bytes:
    """`host:port` for a socket address (IPv6 in brackets): the Host a listener implies."""
    if not isinstance(address, tuple) or len(address) < 2:
        return b"localhost"
    host, port = str(address[0]), int(address[1])
    return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode("ascii")


def with_host(headers: Headers, host: bytes) -> Headers:
    """The headers with Host set to `host`: the one Host header's value replaced (the codec
    allows no second one), or a Host header put first."""
    out: Headers = []
    found = False
    for name, value in headers:
        if len(name) == 4 and name.lower() == b"host":
            out.append((name, host))
            found = True
        else:
            out.append((name, value))
    if not found:
        out.insert(0, (b"Host", host))
    return out
