"""Checks of text fields (header names, methods, host names, paths, TLS parameters...) and
the annotated types built on them."""

from __future__ import annotations

import os
import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator

from usher.balancing import custom as custom_algorithms
from usher.balancing import registered_names
from usher.config.addresses import _HOSTNAME
from usher.tls_profile import check_cipher_string, check_curves

# RFC 9110 tchar: what a header name or a method may be made of.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_POOL_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def _header_name(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid header name {value!r} (letters, digits and !#$%&'*+-.^_`|~)")
    return value


def _method(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"invalid method {value!r}")
    return value.upper()


def _upgrade_protocol(value: str) -> str:
    if not _TOKEN.fullmatch(value):
        raise ValueError(
            f"invalid upgrade protocol {value!r} (a protocol name such as websocket or h2c, "
            "or * for any but h2c)"
        )
    return value.lower()


def _server_name(value: str) -> str:
    name = value.strip().lower()
    bare = name[2:] if name.startswith("*.") else name
    if not _HOSTNAME.fullmatch(bare):
        raise ValueError(f"invalid host name {value!r} (expected e.g. example.com, *.example.com)")
    return name


def _path_prefix(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError(f"path_prefix must start with / (got {value!r})")
    return value


def _regex(value: str) -> str:
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"invalid regex {value!r}: {exc.msg} at position {exc.pos}") from None
    return value


def _request_path(value: str) -> str:
    if not value.startswith("/") or any(c.isspace() for c in value) or _has_control(value):
        raise ValueError(f"invalid request path {value!r} (e.g. /health)")
    return value


def _no_line_breaks(value: str) -> str:
    if _has_control(value):
        raise ValueError("must not contain CR, LF or NUL")
    return value


def _has_control(value: str) -> bool:
    return any(char in value for char in "\r\n\0")


def _algorithm(value: str) -> str:
    if custom_algorithms.is_import_path(value):
        custom_algorithms.load(value, fresh=True)  # its ValueError names the problem
        return value
    known = registered_names()
    if value not in known:
        raise ValueError(f"unknown algorithm {value!r} (known: {', '.join(known)})")
    return value


def _directory(value: str) -> str:
    # parse_config has made it absolute, relative to the config file's directory.
    if not os.path.isdir(value):
        raise ValueError(f"no such directory: {value}")
    return value


def _pool_name(value: str) -> str:
    if not _POOL_NAME.fullmatch(value):
        raise ValueError(f"invalid pool name {value!r} (letters, digits and _.- only)")
    return value


_HeaderName = Annotated[str, AfterValidator(_header_name)]
_UpgradeProtocol = Annotated[str, AfterValidator(_upgrade_protocol)]


_RATE_KEY = re.compile(r"source_ip|route|(header|cookie):[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _rate_key(value: str) -> str:
    if not _RATE_KEY.fullmatch(value):
        raise ValueError(
            f"invalid rate limit key {value!r} (source_ip, route, header:<Name> or cookie:<name>)"
        )
    return value


_RateKey = Annotated[str, AfterValidator(_rate_key)]
_Method = Annotated[str, AfterValidator(_method)]
_ServerName = Annotated[str, AfterValidator(_server_name)]
_PoolName = Annotated[str, AfterValidator(_pool_name)]


def _dns_name(value: str) -> str:
    """A domain name, lower case, without the root's trailing dot."""
    name = value.strip().rstrip(".").lower()
    if not name.isascii() or not _HOSTNAME.fullmatch(name):
        raise ValueError(f"invalid DNS name {value!r} (expected e.g. www.example.com)")
    return name


_DnsName = Annotated[str, AfterValidator(_dns_name)]


def _port(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ValueError(f"port must be 1..65535 (got {value})")
    return value


_Port = Annotated[int, AfterValidator(_port)]


def _cipher_string(value: str) -> str:
    if problem := check_cipher_string(value):
        raise ValueError(problem)
    return value


def _curve(value: str) -> str:
    if problem := check_curves([value]):
        raise ValueError(problem)
    return value


def _curve_list(value: list[str]) -> list[str]:
    if problem := check_curves(value):
        raise ValueError(problem)
    return value


def _tls_version(value: object) -> object:
    # YAML reads an unquoted 1.2 as a number.
    return str(value) if isinstance(value, float) else value


_CipherString = Annotated[str, AfterValidator(_cipher_string)]
_Curves = Annotated[list[Annotated[str, AfterValidator(_curve)]], AfterValidator(_curve_list)]
_TlsVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_tls_version)]
