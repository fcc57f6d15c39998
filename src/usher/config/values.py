"""Value types of the config file: durations, sizes, rates, percentages, networks, status
ranges; each parsed from what YAML gives and published with its JSON Schema."""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated

from annotated_types import Gt
from pydantic import BeforeValidator, WithJsonSchema

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
# "ms" is listed before "m" so that "250ms" is not read as 250 minutes and a stray "s".
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_PATTERN = r"^(([0-9]+(\.[0-9]+)?(ms|s|m|h))+|[0-9]+(\.[0-9]+)?)$"
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def parse_duration(value: object) -> float:
    """Seconds from `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"1m30s"` or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value >= 0:
            return float(value)
    elif isinstance(value, str):
        text = value.strip()
        if _NUMBER.fullmatch(text):
            return float(text)
        parts = _DURATION_PART.findall(text)
        if parts and "".join(number + unit for number, unit in parts) == text:
            return sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    raise ValueError(f"invalid duration {value!r} (use e.g. 250ms, 5s, 2m)")


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kib": 1024,
    "kb": 1000,
    "m": 1024**2,
    "mib": 1024**2,
    "mb": 1000**2,
    "g": 1024**3,
    "gib": 1024**3,
    "gb": 1000**3,
    "t": 1024**4,
    "tib": 1024**4,
    "tb": 1000**4,
}
_SIZE = re.compile(r"([0-9]+)\s*([a-z]*)")
_SIZE_PATTERN = r"^\s*[0-9]+\s*([kKmMgGtT]([iI]?[bB])?|[bB])?\s*$"


def parse_size(value: object) -> int:
    """Bytes from an int, `"512"`, `"64KiB"`/`"16k"` (1024-based) or `"10MB"` (1000-based)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 0:
            return value
    elif isinstance(value, float):
        if value.is_integer() and value >= 0:
            return int(value)
    elif isinstance(value, str):
        match = _SIZE.fullmatch(value.strip().lower())
        if match and match[2] in _SIZE_UNITS:
            return int(match[1]) * _SIZE_UNITS[match[2]]
    raise ValueError(f"invalid size {value!r} (use e.g. 512, 64KiB, 10MiB)")


_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)\s*")
_RATE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*/\s*(s|m|h)\s*$"
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(value: object) -> float:
    """Events per second from `"100/s"`, `"600/m"`, `"1000/h"` or a number (per second)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value)
    elif isinstance(value, str) and (match := _RATE.fullmatch(value)):
        rate = float(match[1]) / _PER[match[2]]
        if rate > 0:
            return rate
    raise ValueError(f"invalid rate {value!r} (use e.g. 100/s, 600/m, 1000/h; > 0)")


def parse_byte_rate(value: object) -> float:
    """Bytes per second from `"1KiB/s"`, `"500/s"`, `"60KiB/m"` or a number (per second)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value) and value > 0:
            return float(value)
    elif isinstance(value, str) and "/" in value:
        size, _, per = value.rpartition("/")
        if per.strip() in _PER:
            try:
                rate = parse_size(size) / _PER[per.strip()]
            except ValueError:
                pass
            else:
                if rate > 0:
                    return rate
    raise ValueError(f"invalid byte rate {value!r} (use e.g. 1KiB/s, 500/s, 60KiB/m; > 0)")


def parse_cidr(value: object) -> str:
    """A network in CIDR form (`10.0.0.0/8`, `2001:db8::/32`); a bare address is a /32 or /128."""
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            pass
    raise ValueError(f"invalid network {value!r} (use CIDR such as 10.0.0.0/8 or 2001:db8::/32)")


def duration_pattern() -> str:
    """The JSON Schema pattern of a duration written as text."""
    return _DURATION_PATTERN


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 250ms, 5s, 2m, 1h, 1m30s, or a number of seconds.",
        }
    ),
]
"""Seconds, written `250ms`, `5s`, `2m`, `1h` or as a plain number of seconds."""

# Days and years, for what lasts that long: a year is 365 days, as HSTS's max-age=31536000.
_LONG_UNITS = {"d": 86400, "y": 365 * 86400}
_LONG = re.compile(r"([0-9]+)(d|y)")


def parse_max_age(value: object) -> int:
    """Whole seconds from `"1y"` (365 days), `"180d"` or anything `parse_duration` reads."""
    if isinstance(value, str) and (match := _LONG.fullmatch(value.strip())):
        return int(match[1]) * _LONG_UNITS[match[2]]
    try:
        return int(parse_duration(value))
    except ValueError:
        raise ValueError(f"invalid max age {value!r} (use e.g. 1y, 180d, 12h)") from None


MaxAge = Annotated[
    int,
    BeforeValidator(parse_max_age),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^[0-9]+(d|y)$"},
                {"type": "string", "pattern": _DURATION_PATTERN},
                {"type": "number", "minimum": 0},
            ],
            "description": "A long duration in whole seconds: 1y (365 days), 180d, 12h, or "
            "anything a duration takes.",
        }
    ),
]
"""Whole seconds, written `1y` (365 days), `180d` or as a `Duration`."""

ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _SIZE_PATTERN},
                {"type": "integer", "minimum": 0},
            ],
            "description": "A size in bytes: 512, 64KiB, 16k, 10MiB, 10MB (1000-based), 1GiB.",
        }
    ),
]
"""Bytes, written as an int, `64KiB`/`16k` (1024-based) or `10MB` (1000-based)."""


Rate = Annotated[
    float,
    BeforeValidator(parse_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": _RATE_PATTERN},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "Events per time unit: 100/s, 600/m, 1000/h, or a number per second.",
        }
    ),
]
"""Events per second, written `100/s`, `600/m` or `1000/h`."""

ByteRate = Annotated[
    float,
    BeforeValidator(parse_byte_rate),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9]+\s*[A-Za-z]*\s*/\s*(s|m|h)\s*$"},
                {"type": "number", "exclusiveMinimum": 0},
            ],
            "description": "Bytes per time unit: 1KiB/s, 500/s, 60KiB/m, or a number per second.",
        }
    ),
]
"""Bytes per second, written `1KiB/s`, `500/s` or `60KiB/m`."""

Cidr = Annotated[
    str,
    BeforeValidator(parse_cidr),
    WithJsonSchema(
        {"type": "string", "description": "A network: 10.0.0.0/8, 2001:db8::/32, 192.0.2.7."}
    ),
]
"""An IPv4 or IPv6 network in CIDR form; a bare address is a one-address network."""


def parse_percent(value: object) -> float:
    """`"20%"` or a fraction such as `0.2` -> 0.2."""
    if isinstance(value, bool):
        raise ValueError(f"invalid percentage {value!r} (use e.g. 20% or 0.2)")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and re.fullmatch(r"\s*[0-9]+(\.[0-9]+)?\s*%\s*", value):
        number = float(value.strip().rstrip("%")) / 100
    else:
        raise ValueError(f"invalid percentage {value!r} (use e.g. 20% or 0.2)")
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"percentage {value!r} is out of range (0% to 100%)")
    return number


Percent = Annotated[
    float,
    BeforeValidator(parse_percent),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"},
                {"type": "number", "minimum": 0, "maximum": 1},
            ],
            "description": "A percentage: `20%`, or a fraction such as `0.2`.",
        }
    ),
]

_STATUS_RANGE = re.compile(r"([1-5][0-9][0-9])(?:-([1-5][0-9][0-9]))?")


def parse_status_ranges(value: str) -> tuple[tuple[int, int], ...]:
    """`"200-399"`, `"200,204"` or `"200-299,301"` -> ((200, 399),) and so on."""
    ranges: list[tuple[int, int]] = []
    for part in str(value).split(","):
        found = _STATUS_RANGE.fullmatch(part.strip())
        if found is None:
            raise ValueError(f"invalid status range {part.strip()!r} (use e.g. 200-399 or 200,204)")
        low = int(found.group(1))
        high = int(found.group(2) or low)
        if high < low:
            raise ValueError(f"invalid status range {part.strip()!r}: {high} < {low}")
        ranges.append((low, high))
    return tuple(ranges)


def _status_ranges(value: object) -> str:
    text = ",".join(str(v) for v in value) if isinstance(value, list) else str(value)
    parse_status_ranges(text)
    return text


def _json_integer(value: object) -> object:
    # JSON Schema's integer: 5 or 5.0, but neither true nor "5", which pydantic would convert.
    if isinstance(value, bool | str):
        raise ValueError(f"must be an integer, not {value!r}")
    return value


PositiveInteger = Annotated[int, Gt(0), BeforeValidator(_json_integer)]
"""An integer > 0 as JSON Schema has it: `5` or `5.0`, never `true` or `"5"`."""
