"""Our own request-smuggling corpus: raw client bytes in, the client's answer and the exact
bytes the backend received out.

Each case says what the client must get (statuses in order, and whether usher then closes the
connection) and what a recording backend must have received, byte for byte (b"" for nothing).
The classes: the classic CL.TE / TE.CL / TE.TE desyncs, obfuscated Transfer-Encoding, bare LF,
obs-fold, bad chunk sizes and extensions, duplicate Content-Length, the framing usher writes
itself (issue 12), and the proxy ("transducer") findings the HTTP Garden published, written
anew as cases for usher. One usher and one recording backend serve the whole module.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, NamedTuple, TypeVar

import httptools
import pytest
import uvloop
import yaml

from tests.recording_backend import RecordingBackend, forwarded
from usher.config import parse_config
from usher.logs import AccessLog
from usher.server import Balancer

T = TypeVar("T")
NOTHING = b""


class Case(NamedTuple):
    name: str
    send: bytes | tuple[bytes, ...]  # one write, or writes in order
    statuses: tuple[int, ...]
    closed: bool  # usher closes the connection after these answers
    # The backend's bytes; when a tuple, any one of them (a refusal that comes after the head
    # was parsed may find the head already written to a reused backend connection, issue 12
    # item 12; a complete request never reaches the backend then).
    backend: bytes | tuple[bytes, ...]


def head(*lines: bytes, method: bytes = b"POST", target: bytes = b"/") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\nHost: x\r\n" + b"".join(lines) + b"\r\n"


HOST = [(b"Host", b"x")]
TE = b"Transfer-Encoding: chunked\r\n"


def fwd_chunked(body: bytes, target: bytes = b"/", method: bytes = b"POST") -> bytes:
    return forwarded(method + b" " + target, HOST, chunked=True, body=body)


def fwd_length(length: int, body: bytes, target: bytes = b"/", method: bytes = b"POST") -> bytes:
    return forwarded(
        method + b" " + target, [*HOST, (b"Content-Length", b"%d" % length)], body=body
    )


def refused_after_head(forwarded_head: bytes, body_so_far: bytes = b"") -> tuple[bytes, ...]:
    """Nothing, or (on a reused backend connection) the head and the body chunks parsed before
    the bad bytes; never the last chunk, so never a complete request."""
    return (NOTHING, forwarded_head, forwarded_head + body_so_far)


CHUNKED_HEAD_FORWARDED = fwd_chunked(b"")
INNER_GET = b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"

CASES = [
    # --- The classics: both framings, or one the other side may not see -------------------
    Case(
        "cl-te",
        head(b"Content-Length: 6\r\n", TE) + b"0\r\n\r\nG",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-cl",
        head(TE, b"Content-Length: 3\r\n") + b"8\r\nSMUGGLED\r\n0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "cl-te-smuggled-get",
        head(b"Content-Length: 44\r\n", TE) + b"0\r\n\r\nGET /admin HTTP/1.1\r\nHost: x\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-te-second-not-chunked",
        head(TE, b"Transfer-Encoding: x\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-te-first-not-chunked",
        head(b"Transfer-Encoding: x\r\n", TE) + b"0\r\n\r\n",
        (501,),
        True,
        NOTHING,
    ),
    Case(
        "te-te-chunked-twice",
        head(TE, TE) + b"1\r\nZ\r\n0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "two-cl-same",
        head(b"Content-Length: 3\r\nContent-Length: 3\r\n") + b"abc",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "two-cl-different",
        head(b"Content-Length: 0\r\nContent-Length: 31\r\n")
        + b"GET /evil HTTP/1.1\r\nHost: x\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case("cl-list", head(b"Content-Length: 3, 3\r\n") + b"abc", (400,), True, NOTHING),
    Case("cl-empty", head(b"Content-Length: \r\n"), (400,), True, NOTHING),
    Case(
        "cl-empty-then-cl",
        head(b"Content-Length: \r\nContent-Length: 5\r\n") + b"abcde",
        (400,),
        True,
        NOTHING,
    ),
    Case("cl-plus", head(b"Content-Length: +3\r\n") + b"abc", (400,), True, NOTHING),
    Case("cl-minus", head(b"Content-Length: -3\r\n") + b"abc", (400,), True, NOTHING),
    Case("cl-hex", head(b"Content-Length: 0x3\r\n") + b"abc", (400,), True, NOTHING),
    Case("cl-underscore", head(b"Content-Length: 1_0\r\n") + b"0123456789", (400,), True, NOTHING),
    Case("cl-space-before-colon", head(b"Content-Length : 3\r\n") + b"abc", (400,), True, NOTHING),
    # --- Obfuscated Transfer-Encoding --------------------------------------------------------
    Case(
        "te-xchunked",
        head(b"Transfer-Encoding: xchunked\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case("te-chunk", head(b"Transfer-Encoding: chunk\r\n") + b"0\r\n\r\n", (400,), True, NOTHING),
    Case(
        "te-unknown",
        head(b"Transfer-Encoding: blegh\r\n") + b"1\r\nZ\r\n0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-quoted", head(b'Transfer-Encoding: "chunked"\r\n') + b"0\r\n\r\n", (400,), True, NOTHING
    ),
    Case(
        "te-parameter",
        head(b"Transfer-Encoding: chunked;q=1\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-vtab", head(b"Transfer-Encoding:\x0bchunked\r\n") + b"0\r\n\r\n", (400,), True, NOTHING
    ),
    Case(
        "te-space-before-colon",
        head(b"Transfer-Encoding : chunked\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-nbsp",
        head(b"Transfer-Encoding: \xa0chunked\xa0\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-high-bytes",
        head(b"Transfer-Encoding: \xffchunked\xff\r\n") + b"1\r\nZ\r\n0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-chunked-gzip",
        head(b"Transfer-Encoding: chunked, gzip\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-gzip-chunked",
        head(b"Transfer-Encoding: gzip, chunked\r\n") + b"0\r\n\r\n",
        (501,),
        True,
        NOTHING,
    ),
    Case(
        "te-identity-chunked",
        head(b"Transfer-Encoding: identity, chunked\r\n") + b"0\r\n\r\n",
        (501,),
        True,
        NOTHING,
    ),
    Case("te-empty", head(b"Transfer-Encoding: \r\n") + b"0\r\n\r\n", (400,), True, NOTHING),
    Case(
        "te-folded",
        head(b"Transfer-Encoding:\r\n chunked\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "te-comma-chunked-with-cl",
        head(b"Transfer-Encoding: ,chunked\r\nContent-Length: 5\r\n") + b"0\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    # Spellings of plain chunked: usher writes its own header.
    Case(
        "te-upper",
        head(b"Transfer-Encoding: CHUNKED\r\n") + b"0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"0\r\n\r\n"),
    ),
    Case(
        "te-name-lower",
        head(b"transfer-encoding: chunked\r\n") + b"0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"0\r\n\r\n"),
    ),
    Case(
        "te-comma-chunked",
        head(b"Transfer-Encoding: ,chunked\r\n") + b"1\r\nZ\r\n0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"1\r\nZ\r\n0\r\n\r\n"),
    ),
    Case(
        "te-chunked-comma",
        head(b"Transfer-Encoding: chunked,\r\n") + b"1\r\nZ\r\n0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"1\r\nZ\r\n0\r\n\r\n"),
    ),
    Case(
        "te-tabs",
        head(b"Transfer-Encoding:\tchunked\t\r\n") + b"1\r\nZ\r\n0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"1\r\nZ\r\n0\r\n\r\n"),
    ),
    Case(
        "te-spaces",
        head(b"Transfer-Encoding:   chunked   \r\n") + b"1\r\nZ\r\n0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"1\r\nZ\r\n0\r\n\r\n"),
    ),
    # Framing-looking names are not framing: dropped, never forwarded for a backend to misread.
    Case(
        "te-underscore-name",
        head(b"Transfer_Encoding: chunked\r\nContent-Length: 5\r\n") + b"0\r\n\r\n",
        (200,),
        False,
        fwd_length(5, b"0\r\n\r\n"),
    ),
    Case(
        "cl-underscore-name",
        head(b"Content_Length: 40\r\n", TE) + b"0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"0\r\n\r\n"),
    ),
    # --- Line endings and folding --------------------------------------------------------------
    Case("bare-lf-head", b"GET / HTTP/1.1\nHost: x\n\n", (400,), True, NOTHING),
    Case("bare-lf-one-header", b"GET / HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n", (400,), True, NOTHING),
    Case("bare-cr-in-value", head(b"X-A: this\rvalue\r\n", method=b"GET"), (400,), True, NOTHING),
    Case(
        "cr-as-line-end", head(b"Visible: a\rSmuggled: b\r\n", method=b"GET"), (400,), True, NOTHING
    ),
    Case("nul-in-value", b"GET / HTTP/1.1\r\nHost: x\x00.evil\r\n\r\n", (400,), True, NOTHING),
    Case("nul-at-end-of-value", head(b"Evil: evil\x00\r\n", method=b"GET"), (400,), True, NOTHING),
    Case("line-without-colon", head(b"Te\nst: test\r\n", method=b"GET"), (400,), True, NOTHING),
    Case("obs-fold-space", head(b"X-A: a\r\n b\r\n", method=b"GET"), (400,), True, NOTHING),
    Case("obs-fold-tab", head(b"X-A: a\r\n\tb\r\n", method=b"GET"), (400,), True, NOTHING),
    Case(
        "space-before-first-header",
        b"GET / HTTP/1.1\r\n\tContent-Length: 1\r\nHost: x\r\n\r\nX",
        (400,),
        True,
        NOTHING,
    ),
    Case(
        "empty-header-name",
        b"GET / HTTP/1.1\r\n: ignored\r\nHost: x\r\n\r\n",
        (400,),
        True,
        NOTHING,
    ),
    Case("high-byte-in-name", head(b"Header\x85: value\r\n", method=b"GET"), (400,), True, NOTHING),
    Case("bare-lf-request-line", b"GET /\nHTTP/1.1\r\nHost: x\r\n\r\n", (400,), True, NOTHING),
    # --- Chunk sizes, extensions and chunk line ends ------------------------------------------
    Case(
        "chunk-size-not-hex",
        head(TE) + b"zz\r\nabc\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-0x",
        head(TE) + b"0x3\r\nabc\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-minus",
        head(TE) + b"-0x0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-plus",
        head(TE) + b"+3\r\nabc\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-underscore",
        head(TE) + b"0_2e\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-junk-after",
        head(TE) + b"1junk\r\nZ\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-leading-space",
        head(TE) + b"   0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-empty",
        head(TE) + b"\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-size-overflow",
        head(TE) + b"1ffffffffffffffff\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-bare-lf-after-size",
        head(TE) + b"3\nabc\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-bare-cr-after-size",
        head(TE) + b"1\r0\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-cr-before-extension",
        head(TE) + b"2\r\r;a\r\n02\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-nul-in-extension",
        head(TE) + b"3;a\x00b\r\nabc\r\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "chunk-data-too-long",
        head(TE) + b"a\r\n0123456789\n0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED, b"a\r\n0123456789\r\n"),
    ),
    Case(
        "chunk-data-then-garbage",
        head(TE) + b"3\r\nabcXX0\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED, b"3\r\nabc\r\n"),
    ),
    Case(
        "invalid-chunk-then-pipelined",
        head(TE) + b"INVALID!!!\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    # Extensions are dropped: usher writes its own chunk lines.
    Case(
        "chunk-extensions-dropped",
        head(TE) + b"3;name=value;x\r\nabc\r\n0;last\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"3\r\nabc\r\n0\r\n\r\n"),
    ),
    # Chunk data that looks like a request stays data.
    Case(
        "chunk-data-holding-a-request",
        head(TE) + b"17\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"17\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n\r\n0\r\n\r\n"),
    ),
    # --- Trailers ------------------------------------------------------------------------------
    Case(
        "trailer-without-space",
        head(TE) + b"0\r\nX:POST / HTTP/1.1\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"0\r\nX: POST / HTTP/1.1\r\n\r\n"),
    ),
    Case(
        "trailer-content-length",
        head(TE) + b"0\r\nContent-Length: 5\r\n\r\n",
        (400,),
        True,
        refused_after_head(CHUNKED_HEAD_FORWARDED),
    ),
    Case(
        "trailer-transfer-encoding",
        head(TE) + b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"0\r\n\r\n"),
    ),
    Case(
        "trailers-usher-controls",
        head(TE) + b"0\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nHost: internal\r\n"
        b"Forwarded: for=6.6.6.6\r\nVia: 1.0 evil\r\nConnection: x\r\nX-Kept: 1\r\n\r\n",
        (200,),
        False,
        fwd_chunked(b"0\r\nX-Kept: 1\r\n\r\n"),
    ),
    # --- The framing usher writes (issue 12 items 2 and 4) --------------------------------------
    Case(
        "empty-chunked-one-write", head(TE) + b"0\r\n\r\n", (200,), False, fwd_chunked(b"0\r\n\r\n")
    ),
    Case(
        "empty-chunked-second-write",
        (head(TE), b"0\r\n\r\n"),
        (200,),
        False,
        fwd_chunked(b"0\r\n\r\n"),
    ),
    Case(
        "cl-leading-zeros",
        head(b"Content-Length: 010\r\n") + b"0123456789",
        (200,),
        False,
        fwd_length(10, b"0123456789"),
    ),
    Case(
        "cl-name-lower",
        head(b"content-length: 3\r\n") + b"abc",
        (200,),
        False,
        fwd_length(3, b"abc"),
    ),
    Case(
        "get-with-a-body-keeps-it",
        head(b"Content-Length: 10\r\n", method=b"GET") + b"1234567890",
        (200,),
        False,
        fwd_length(10, b"1234567890", method=b"GET"),
    ),
    Case(
        "cl-zero-then-pipelined",
        head(b"Content-Length: 0\r\n")
        + head(b"Content-Length: %d\r\n" % len(INNER_GET), target=b"/1")
        + INNER_GET,
        (200, 200),
        False,
        fwd_length(0, b"") + fwd_length(len(INNER_GET), INNER_GET, target=b"/1"),
    ),
    Case(
        "pipelined-after-close-is-not-read",
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\nGET /2 HTTP/1.1\r\nHost: x\r\n\r\n",
        (200,),
        True,
        forwarded(b"GET /", HOST),
    ),
    Case(
        "good-then-invalid-pipelined",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nInvalid\r\n\r\n",
        (200, 400),
        True,
        forwarded(b"GET /", HOST),
    ),
    # --- Versions and methods -------------------------------------------------------------------
    Case("version-long", b"GET / HTTP/1.32\r\nHost: x\r\n\r\n", (400,), True, NOTHING),
    Case("version-garbage", b"GET / HTTP/\r\r1.1\r\nHost: x\r\n\r\n", (400,), True, NOTHING),
    Case(
        "method-garbage", b'G=":<>(e),[T];?" / HTTP/1.1\r\nHost: x\r\n\r\n', (400,), True, NOTHING
    ),
    Case("method-nul", b"\x00 / HTTP/1.1\r\nHost: x\r\n\r\n", (400,), True, NOTHING),
]


def _pieces(send: bytes | tuple[bytes, ...]) -> tuple[bytes, ...]:
    return (send,) if isinstance(send, bytes) else send


class _Statuses:
    """httptools callbacks: the status of each complete response."""

    def __init__(self, parser_ref: list[httptools.HttpResponseParser]) -> None:
        self.statuses: list[int] = []
        self._ref = parser_ref

    def on_message_complete(self) -> None:
        self.statuses.append(self._ref[0].get_status_code())


class Rig:
    """usher and a recording backend on a uvloop loop in a thread; the tests use plain sockets."""

    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.backend = RecordingBackend()
        port = self.run(self.backend.start())
        config = {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
            "pools": {
                "p": {
                    "backends": [{"address": f"127.0.0.1:{port}"}],
                    "timeouts": {"read": "3s"},
                    # A refused request must not eject the only backend.
                    "passive_health": {"max_fails": 0},
                }
            },
        }
        self.balancer = Balancer(
            parse_config(yaml.safe_dump(config), "corpus.yaml"), access_log=AccessLog(enabled=False)
        )
        self.run(self.balancer.start())
        self.port = next(iter(self.balancer.bound.values())).port

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def close(self) -> None:
        self.run(self.balancer.stop(timeout=1.0))
        self.run(self.backend.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

    def exchange(
        self, pieces: tuple[bytes, ...], answers: int, closed: bool
    ) -> tuple[list[int], bool]:
        """Send, read `answers` responses; returns their statuses and whether usher closed."""
        ref: list[httptools.HttpResponseParser] = []
        seen = _Statuses(ref)
        parser = httptools.HttpResponseParser(seen)
        ref.append(parser)
        eof = False
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            for i, piece in enumerate(pieces):
                if i:
                    threading.Event().wait(0.05)  # its own read on usher's side
                sock.sendall(piece)
            while len(seen.statuses) < answers or (closed and not eof):
                data = sock.recv(65536)
                if not data:
                    eof = True
                    break
                parser.feed_data(data)
        return seen.statuses, eof

    def sync(self) -> None:
        """A request on a fresh connection, answered: bytes of the case before it that were on
        their way to the backend have arrived."""
        statuses, _ = self.exchange(
            (b"GET /sync HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",), 1, True
        )
        assert statuses == [200]


SYNC_FORWARDED = forwarded(b"GET /sync", HOST)


@pytest.fixture(scope="module")
def rig() -> Iterator[Rig]:
    r = Rig()
    yield r
    r.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_smuggling_case(rig: Rig, case: Case) -> None:
    rig.sync()  # an idle backend connection is there to be reused, as in production
    rig.backend.clear()
    statuses, eof = rig.exchange(_pieces(case.send), len(case.statuses), case.closed)
    assert tuple(statuses) == case.statuses
    assert eof == case.closed
    rig.sync()
    received = rig.backend.received
    assert received.endswith(SYNC_FORWARDED)
    received = received[: -len(SYNC_FORWARDED)]
    expected = case.backend if isinstance(case.backend, tuple) else (case.backend,)
    assert received in expected, received


def test_names_are_unique() -> None:
    names = [c.name for c in CASES]
    assert len(names) == len(set(names))
