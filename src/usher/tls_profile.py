"""The protocol side of TLS contexts: versions, TLS 1.2 cipher suites, key-exchange groups.

Listeners default to Mozilla's "intermediate" server profile (version 5.7): TLS 1.2 and 1.3;
for TLS 1.2 only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 (no CBC, no DHE since
usher loads no DH parameters); groups X25519, P-256, P-384; the client's cipher order wins
(clients without AES hardware pick ChaCha20). TLS 1.3 suites are OpenSSL's defaults, which
are the profile's.

Python's `ssl` (before 3.14) can set only one group (`set_ecdh_curve`), which would leave
TLS 1.3 clients a single key share. `set_groups` reaches OpenSSL's `SSL_CTX_set1_groups_list`
instead: natively on Python 3.14+, else through ctypes on the `SSL_CTX` pointer of CPython's
context object, checked against the context before it is used (see `_ssl_ctx_pointer`).
"""

from __future__ import annotations

import ctypes
import functools
import ssl
import sys
from collections.abc import Sequence
from typing import Final

from usher.errors import GroupsUnreachable

__all__ = [
    "DEFAULT_CURVES",
    "INTERMEDIATE_CIPHERS",
    "TLS_VERSIONS",
    "GroupsUnreachable",
    "check_cipher_string",
    "check_curves",
    "set_groups",
    "set_server_protocol",
]

INTERMEDIATE_CIPHERS: Final = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
    )
)
DEFAULT_CURVES: Final = ("X25519", "prime256v1", "secp384r1")
TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


# SSL_CTX_set1_groups_list is a macro over SSL_CTX_ctrl with this command (OpenSSL 1.1.1+).
_SSL_CTRL_SET_GROUPS_LIST: Final = 92


def set_server_protocol(
    ctx: ssl.SSLContext, *, min_version: str, ciphers: str | None, curves: Sequence[str]
) -> None:
    """Give a server context its protocol versions, TLS 1.2 ciphers and groups.

    On a listening context these take effect for connections accepted afterwards: OpenSSL
    copies them into each connection when it is created, and the SNI switch to another
    context does not change them.
    """
    ctx.minimum_version = TLS_VERSIONS[min_version]
    ctx.set_ciphers(ciphers or INTERMEDIATE_CIPHERS)
    set_groups(ctx, curves)
    # Python's server contexts force the server's order; the profile lets the client choose.
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE


def set_groups(ctx: ssl.SSLContext, names: Sequence[str]) -> None:
    """Offer (client) or accept (server) exactly these key-exchange groups, in this order.

    Raises ssl.SSLError when OpenSSL refuses the list (an unknown or repeated name), and
    GroupsUnreachable when this Python's context cannot be reached."""
    text = ":".join(names)
    native = getattr(ctx, "set_groups", None)  # Python 3.14+
    if native is not None:
        native(text)
        return
    lib = _libssl()
    pointer = _ssl_ctx_pointer(ctx, lib)
    done = lib.SSL_CTX_ctrl(pointer, _SSL_CTRL_SET_GROUPS_LIST, 0, text.encode("ascii"))
    if not done:
        lib.ERR_clear_error()  # else the ssl module reports it with its next, unrelated error
        raise ssl.SSLError(f"OpenSSL refuses the group list {text!r}")


def check_curves(names: Sequence[str]) -> str | None:
    """Why `names` cannot be a context's groups (naming the culprit), or None when it can."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        for name in names:
            if not name.isascii() or ":" in name or not name.strip():
                return f"invalid curve name {name!r}"
            try:
                set_groups(scratch, [name])
            except ssl.SSLError:
                return f"unknown curve {name!r} (e.g. X25519, prime256v1, secp384r1)"
        if len({name.lower() for name in names}) != len(names):
            return "each curve may be listed once"
        set_groups(scratch, names)
    except (ssl.SSLError, GroupsUnreachable) as exc:
        return str(exc)
    return None


def check_cipher_string(text: str) -> str | None:
    """Why OpenSSL cipher string `text` is bad, or None when it selects TLS 1.2 suites and
    every name it adds is known (OpenSSL itself skips unknown names without a word)."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for element in text.replace(",", ":").replace(" ", ":").split(":"):
        if not element or element[0] in "!-+@":
            continue  # removals, reorderings and @STRENGTH / @SECLEVEL=n select nothing
        try:
            scratch.set_ciphers(element)
        except ssl.SSLError:
            if element.startswith("TLS_"):
                return f"{element!r} is a TLS 1.3 suite: `ciphers` sets TLS 1.2 suites only"
            return f"{element!r} names no cipher suite OpenSSL knows (see `openssl ciphers`)"
    try:
        scratch.set_ciphers(text)
    except ssl.SSLError:
        return f"{text!r} leaves no TLS 1.2 cipher suite"
    return None


@functools.cache
def _libssl() -> ctypes.CDLL:
    """The libssl the `ssl` module itself uses: symbols looked up through `_ssl`'s own handle
    resolve in the libraries it was linked with, never another libssl on the system."""
    import _ssl

    if sys.implementation.name != "cpython" or not getattr(_ssl, "__file__", None):
        raise GroupsUnreachable("setting TLS curves needs CPython (or Python 3.14+)")
    lib = ctypes.CDLL(_ssl.__file__)
    lib.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]
    lib.SSL_CTX_ctrl.restype = ctypes.c_long
    lib.SSL_CTX_get_options.argtypes = [ctypes.c_void_p]
    lib.SSL_CTX_get_options.restype = ctypes.c_uint64
    lib.ERR_clear_error.argtypes = []
    lib.ERR_clear_error.restype = None
    return lib


def _ssl_ctx_pointer(ctx: ssl.SSLContext, lib: ctypes.CDLL) -> int:
    """The `SSL_CTX *` of a context: CPython's context object holds it right after the object
    header (`PySSLContext` in Modules/_ssl.c, unchanged from 3.7 to 3.13). Before it is trusted,
    OpenSSL must report the same options through it as the `ssl` module does."""
    pointer = ctypes.c_void_p.from_address(id(ctx) + object.__basicsize__).value
    if not pointer or lib.SSL_CTX_get_options(pointer) != ctx.options:
        raise GroupsUnreachable("cannot reach this Python's OpenSSL context to set TLS curves")
    return pointer
