"""Access logs: one line per request, readable text by default or JSON (`--log-format json`)."""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import math
import sys
import time
from typing import Final, Literal, TextIO

LogFormat = Literal["text", "json"]


class AccessRecord:
    """What one request did, filled in as it goes."""

    __slots__ = (
        "backend",
        "bytes",
        "client",
        "duration",
        "listener",
        "method",
        "pool",
        "request_id",
        "status",
        "target",
        "time",
        "upstream_time",
    )

    def __init__(
        self, at: float, client: bytes, method: bytes, target: bytes, listener: str
    ) -> None:
        self.time = at
        self.client = client
        self.method = method
        self.target = target
        self.listener = listener
        self.status = 0
        self.bytes = 0
        self.pool: str | None = None
        self.backend: str | None = None
        self.duration = 0.0
        self.upstream_time: float | None = None
        self.request_id: bytes | None = None

    @staticmethod
    def now(client: bytes, method: bytes, target: bytes, listener: str) -> AccessRecord:
        # The class by name, not `cls(...)`: compiled, that is a direct construction instead
        # of a call through the type (a third of the record's cost).
        return AccessRecord(time.time(), client, method, target, listener)

    def finish(
        self,
        status: int,
        nbytes: int,
        pool: str | None,
        backend: str | None,
        duration: float,
        *,
        upstream_time: float | None = None,
    ) -> None:
        self.status = status
        self.bytes = nbytes
        self.pool = pool
        self.backend = backend
        self.duration = duration
        self.upstream_time = upstream_time

    def as_dict(self) -> dict[str, object]:
        return {
            "time": _iso(self.time),
            "listener": self.listener,
            "client": self.client.decode("latin-1"),
            "method": self.method.decode("latin-1"),
            "path": self.target.decode("latin-1"),
            "status": self.status,
            "bytes": self.bytes,
            "duration_ms": round(self.duration * 1000, 3),
            "pool": self.pool,
            "backend": self.backend,
            "upstream_ms": None
            if self.upstream_time is None
            else round(self.upstream_time * 1000, 3),
            **({} if self.request_id is None else {"request_id": self.request_id.decode()}),
        }

    def as_text(self) -> str:
        return self.text_line()[:-1]

    def text_line(self) -> str:
        """The text line with its newline, built in one piece (no partial strings joined)."""
        at = self.time
        upstream = "-" if self.upstream_time is None else _ms(self.upstream_time)
        request_id = "" if self.request_id is None else f" id={self.request_id.decode()}"
        return (
            f"{_TIMESTAMPS.second_of(at)}{_MILLIS[int(at * 1000) % 1000]} "
            f"{self.client.decode('latin-1')} "
            f'"{self.method.decode("latin-1")} {self.target.decode("latin-1")}" '
            f"{self.status} {self.bytes}B {_ms(self.duration)} "
            f"pool={self.pool or '-'} backend={self.backend or '-'} upstream={upstream}"
            f"{request_id}\n"
        )


class ConnectionRecord:
    """What one layer-4 connection (or UDP session) did: HAProxy's `mode tcp` log line."""

    __slots__ = (
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "duration",
        "listener",
        "pool",
        "protocol",
        "result",
        "sni",
        "time",
    )

    def __init__(self, client: str, listener: str, protocol: str) -> None:
        self.time = time.time()
        self.client = client
        self.listener = listener
        self.protocol = protocol
        self.result = ""
        self.bytes_in = 0
        self.bytes_out = 0
        self.pool: str | None = None
        self.backend: str | None = None
        self.sni: str | None = None
        self.duration = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "time": _iso(self.time),
            "listener": self.listener,
            "protocol": self.protocol,
            "client": self.client,
            "result": self.result,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "duration_ms": round(self.duration * 1000, 3),
            "pool": self.pool,
            "backend": self.backend,
            "sni": self.sni,
        }

    def as_text(self) -> str:
        sni = f" sni={self.sni}" if self.sni else ""
        return (
            f"{_iso(self.time)} {self.client} {self.protocol.upper()} {self.listener} "
            f"{self.result} in={self.bytes_in}B out={self.bytes_out}B "
            f"{self.duration * 1000:.1f}ms pool={self.pool or '-'} "
            f"backend={self.backend or '-'}{sni}"
        )


class QueryRecord:
    """One DNS query: who asked what, and what it got."""

    __slots__ = (
        "answers",
        "client",
        "duration",
        "listener",
        "qname",
        "qtype",
        "rcode",
        "time",
        "transport",
    )

    def __init__(self, client: str, listener: str, transport: str) -> None:
        self.time = time.time()
        self.client = client
        self.listener = listener
        self.transport = transport  # udp or tcp
        self.qname = ""
        self.qtype = ""
        self.rcode = ""
        self.answers: list[str] = []
        self.duration = 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "time": _iso(self.time),
            "listener": self.listener,
            "protocol": "dns",
            "transport": self.transport,
            "client": self.client,
            "name": self.qname,
            "type": self.qtype,
            "rcode": self.rcode,
            "answers": list(self.answers),
            "duration_ms": round(self.duration * 1000, 3),
        }

    def as_text(self) -> str:
        return (
            f"{_iso(self.time)} {self.client} DNS/{self.transport.upper()} {self.listener} "
            f"{self.qname or '-'} {self.qtype or '-'} {self.rcode} "
            f"answers={','.join(self.answers) or '-'} {self.duration * 1000:.1f}ms"
        )


class _Timestamps:
    """ISO 8601 UTC times with milliseconds. Formatting the date and time (gmtime, strftime)
    was most of an access line's cost; it changes once a second, so it is kept per second."""

    __slots__ = ("prefix", "second")

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def format(self, at: float) -> str:
        return self.second_of(at) + _MILLIS[int(at * 1000) % 1000]

    def second_of(self, at: float) -> str:
        """The date and time to the second, without the milliseconds."""
        second = math.floor(at)  # what gmtime rounds to
        if second != self.second:
            self.prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
            self.second = second
        return self.prefix


# ".000Z" to ".999Z", the end of every timestamp, made once.
_MILLIS = [f".{millis:03d}Z" for millis in range(1000)]
_TIMESTAMPS = _Timestamps()


def _iso(at: float) -> str:
    return _TIMESTAMPS.format(at)


def _ms(seconds: float) -> str:
    """`f"{seconds * 1000:.1f}ms"` without formatting a float (dtoa), which was the costliest
    part of a line left: `ms * 10` rounded to the nearest integer, the tenths of a millisecond
    under 100 ms read from a table. That rounds as the float formatting does except within an
    ulp of a tie (x.x5), where it formats."""
    ms = seconds * 1000
    tenths = ms * 10
    if 0.0 < tenths < 1e9:  # ulp(tenths) < 1e-6 here, far below the margin; -0.0 formats
        whole = int(tenths)
        fraction = tenths - whole
        if fraction < 0.4999 or fraction > 0.5001:
            if fraction > 0.5:
                whole += 1
            if whole < _TENTHS_IN_TABLE:
                return _TENTHS[whole]
            return f"{whole // 10}.{whole % 10}ms"
    return f"{ms:.1f}ms"


# "0.0ms" to "99.9ms", made once: most requests take less than 100 ms.
_TENTHS_IN_TABLE: Final = 1000
_TENTHS: Final = [f"{tenths // 10}.{tenths % 10}ms" for tenths in range(_TENTHS_IN_TABLE)]


class AccessLog:
    """Writes access records to a stream; does no work at all when disabled.

    With no stream given, lines go to the process's stdout in batches: one write of up to
    BATCH_LINES lines, or of what has come within BATCH_DELAY seconds of a batch's first line
    (a timer on the running loop), and the rest at `flush()` and at exit. A text stream's
    `write` per line was a fifth of a line's cost. A stream given explicitly gets each line
    as it is written (tests and callers that read it back at once)."""

    __slots__ = ("_flush_pending", "_pending", "enabled", "format", "stream")

    def __init__(
        self, *, enabled: bool = True, format: LogFormat = "text", stream: TextIO | None = None
    ) -> None:
        self.enabled = enabled
        self.format = format
        self.stream = stream
        self._pending: list[str] = []
        self._flush_pending = False

    def write(self, record: AccessRecord | ConnectionRecord | QueryRecord) -> None:
        if not self.enabled:
            return
        if self.format == "json":
            line = json.dumps(record.as_dict(), separators=(",", ":")) + "\n"
        elif isinstance(record, AccessRecord):
            line = record.text_line()
        else:
            line = record.as_text() + "\n"
        if self.stream is not None:
            self.stream.write(line)
            return
        pending = self._pending
        pending.append(line)
        if len(pending) == 1:
            _HOLDING.add(self)
        if len(pending) >= BATCH_LINES:
            self.flush()
        elif not self._flush_pending:
            self._flush_later()

    def flush(self) -> None:
        """Write the lines held back to stdout (its own buffer flushes it to the file)."""
        if self._pending:
            lines = "".join(self._pending)
            self._pending.clear()
            _HOLDING.discard(self)
            sys.stdout.write(lines)

    def _flush_later(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a caller outside the server): write at once
            self.flush()
            return
        self._flush_pending = True
        loop.call_later(BATCH_DELAY, self._timer_flush)

    def _timer_flush(self) -> None:
        self._flush_pending = False
        self.flush()


BATCH_LINES = 64
BATCH_DELAY = 0.25

# The logs that hold lines back for stdout, written by one exit handler. A handler per log kept
# every log ever built (one per balancer: each test, each reload) alive until exit; here a log
# is held only while it has lines to write.
_HOLDING: set[AccessLog] = set()


def _flush_held() -> None:
    for log in list(_HOLDING):
        log.flush()


atexit.register(_flush_held)


# Module loggers of libraries that call `log.debug` for every header they code (hpack: several
# per request). Not emitted, each call still cost two Python calls into logging (`debug`,
# `isEnabledFor`) plus the argument tuple.
QUIET_DEBUG_LOGGERS: Final = ("hpack.hpack", "hpack.table")
# Takes any arguments, does nothing, in C: the cheapest stand-in for a logging method.
_IGNORE_ARGUMENTS: Final = "".format


def make_no_op(target: object, *methods: str) -> None:
    """Replace `methods` of one object (a logger) by a call that ignores its arguments: an
    instance attribute shadows its class's method for that object only."""
    for method in methods:
        setattr(target, method, _IGNORE_ARGUMENTS)


def quiet_library_debug() -> None:
    """After the process's logging is set up: make the debug calls of QUIET_DEBUG_LOGGERS a
    no-op unless they are enabled for DEBUG now (a user who asked for hpack's debug records,
    e.g. from an embedding program, gets them). Each logger's other levels are untouched;
    `del logging.getLogger(name).debug` undoes it."""
    for name in QUIET_DEBUG_LOGGERS:
        logger = logging.getLogger(name)
        if not logger.isEnabledFor(logging.DEBUG):
            make_no_op(logger, "debug")
