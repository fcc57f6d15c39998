"""Fuzzing the request codec with hypothesis: whatever the bytes and however they are split,
feeding them ends in requests or a refusal with a 4xx status (or 501 for a transfer coding,
505 for an HTTP version we do not speak), never in a crash, a hang or another exception."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from usher.errors import ClientError
from usher.http.codec import Data, EndOfMessage, HeadLimits, Request, RequestReader

LIMITS = HeadLimits(max_header_size=4096, max_request_line=1024, max_headers=20, max_body_size=4096)
FUZZ = settings(
    max_examples=400,
    deadline=500,  # ms per example: a hang fails
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,  # the same cases every run: a CI failure reproduces
    database=None,
)

METHODS = st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"CONNECT", b"G\x00T", b"get", b""])
VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.1\n", b"HTTX/1.1", b""])
NAMES = st.sampled_from(
    [
        b"Host",
        b"Content-Length",
        b"Transfer-Encoding",
        b"Connection",
        b"Upgrade",
        b"Expect",
        b"X-A",
        b"Transfer-Encoding ",
        b" Host",
        b"X\x00A",
    ]
)
VALUES = st.one_of(
    st.sampled_from(
        [b"chunked", b"0", b"5", b"-1", b"1, 1", b"x", b"close", b"upgrade", b"websocket", b"\x00"]
    ),
    st.binary(max_size=12),
)
EOLS = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n "])
BODIES = st.one_of(
    st.binary(max_size=64), st.just(b"0\r\n\r\n"), st.just(b"5\r\nhello\r\n0\r\n\r\n")
)


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """Near-valid requests: the places where parsers disagree, shuffled."""
    eol = draw(EOLS)
    line = draw(METHODS) + b" " + draw(st.sampled_from([b"/", b"/a?b=c", b"*", b"", b"/\x7f"]))
    line += b" " + draw(VERSIONS)
    headers = draw(st.lists(st.tuples(NAMES, VALUES), max_size=6))
    head = line + eol + b"".join(n + b": " + v + draw(EOLS) for n, v in headers) + eol
    return head + draw(BODIES)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[last:point])
        last = point
    return pieces


def run(pieces: list[bytes]) -> None:
    reader = RequestReader(LIMITS)
    started = time.perf_counter()
    try:
        for piece in pieces:
            for event in reader.feed(piece):
                assert isinstance(event, Request | Data | EndOfMessage) or reader.upgraded
                if isinstance(event, Request):
                    assert event.method and event.version in (b"1.0", b"1.1")
    except ClientError as exc:
        assert 400 <= exc.status < 500 or exc.status in (501, 505), exc
    assert time.perf_counter() - started < 0.5


@FUZZ
@given(st.binary(max_size=512), st.lists(st.integers(min_value=0), max_size=8))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    run(split(data, cuts))


@FUZZ
@given(st.lists(requests(), min_size=1, max_size=3), st.lists(st.integers(min_value=0), max_size=8))
def test_near_valid_requests(pipelined: list[bytes], cuts: list[int]) -> None:
    run(split(b"".join(pipelined), cuts))


SEEDS = [
    b"\x10GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x30POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    b"\x20POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    b"0\r\nX-T: 1\r\n\r\n",
    b"\x08GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\nxx",
    b"\x05GET / HTTP/1.0\r\n\r\nGET / HTTP/1.1\r\nHost: y\r\nConnection: close\r\n\r\n",
]


def test_atheris_coverage_guided(tmp_path) -> None:
    """libFuzzer through atheris from a few valid requests, bounded in runs and time;
    skipped where atheris is missing."""
    pytest.importorskip("atheris")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed{i}").write_bytes(seed)
    harness = Path(__file__).with_name("atheris_codec.py")
    done = subprocess.run(
        [
            sys.executable,
            str(harness),
            "-runs=50000",
            "-max_total_time=20",
            "-max_len=1024",
            "-seed=1",
            str(corpus),
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Done " in done.stderr, done.stderr[-3000:]
