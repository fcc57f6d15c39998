"""The access log's lines stay byte for byte what design.md specifies, however they are made
(the per-second timestamp cache, batched writes to stdout)."""

from __future__ import annotations

import asyncio
import io
import json
import random
import time

import pytest

from usher import logs
from usher.logs import AccessLog, AccessRecord, ConnectionRecord, QueryRecord


# The reference: the formatting as it was before the timestamp cache (the contract's wording).
def reference_iso(at: float) -> str:
    millis = int(at * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{millis:03d}Z"


def reference_text(r: AccessRecord) -> str:
    upstream = "-" if r.upstream_time is None else f"{r.upstream_time * 1000:.1f}ms"
    return (
        f"{reference_iso(r.time)} {r.client.decode('latin-1')} "
        f'"{r.method.decode("latin-1")} {r.target.decode("latin-1")}" '
        f"{r.status} {r.bytes}B {r.duration * 1000:.1f}ms "
        f"pool={r.pool or '-'} backend={r.backend or '-'} upstream={upstream}"
        + ("" if r.request_id is None else f" id={r.request_id.decode()}")
    )


def times(rng: random.Random) -> list[float]:
    """Times around second and millisecond boundaries, repeated seconds, and random ones."""
    base = 1_764_855_296.0
    edges = [base + d for d in (0.0, 0.0005, 0.9994999, 0.9995, 0.9999999, 1.0, 1.0000001)]
    steady = [base + 10 + i * 0.0137 for i in range(200)]  # many lines in the same seconds
    scattered = [rng.uniform(0, 4_000_000_000) for _ in range(300)]
    jumps = [base + 5.5, base + 2.25, base + 5.75, 86_399.9995, 0.0, 0.001]
    return edges + steady + scattered + jumps


def records(rng: random.Random) -> list[AccessRecord]:
    out = []
    for at in times(rng):
        r = AccessRecord(at, b"192.0.2.7", b"GET", "/caf\u00e9?q=1".encode(), "web")
        if rng.random() < 0.7:
            r.finish(
                rng.choice([200, 404, 502]),
                rng.randrange(0, 10**7),
                rng.choice([None, "p"]),
                rng.choice([None, "10.0.0.1:80"]),
                rng.uniform(0, 3),
                upstream_time=rng.choice([None, rng.uniform(0, 3), 0.00005, 0.00015]),
            )
        if rng.random() < 0.3:
            r.request_id = b"0f3c2a"
        out.append(r)
    return out


def test_timestamps_match_strftime_for_every_time() -> None:
    for at in times(random.Random(1)):
        assert logs._iso(at) == reference_iso(at), at


def test_text_lines_match_the_reference_byte_for_byte() -> None:
    stream = io.StringIO()
    log = AccessLog(stream=stream)
    rs = records(random.Random(2))
    for r in rs:
        log.write(r)
    assert stream.getvalue() == "".join(reference_text(r) + "\n" for r in rs)


def test_json_lines_keep_their_fields_and_time() -> None:
    stream = io.StringIO()
    log = AccessLog(format="json", stream=stream)
    r = AccessRecord(1_764_855_296.9995, b"192.0.2.7", b"GET", b"/", "web")
    r.finish(200, 5, "p", "b", 0.0123456, upstream_time=0.001)
    log.write(r)
    assert stream.getvalue() == (
        '{"time":"2025-12-04T13:34:56.999Z","listener":"web","client":"192.0.2.7",'
        '"method":"GET","path":"/","status":200,"bytes":5,"duration_ms":12.346,'
        '"pool":"p","backend":"b","upstream_ms":1.0}\n'
    )
    assert json.loads(stream.getvalue())["time"] == reference_iso(r.time)


def test_connection_and_query_lines_use_the_same_times() -> None:
    c = ConnectionRecord("192.0.2.7:5000", "db", "tcp")
    c.time = 1_764_855_296.25
    q = QueryRecord("192.0.2.7", "dns", "udp")
    q.time = 1_764_855_296.5
    assert c.as_text().startswith(reference_iso(c.time) + " 192.0.2.7:5000 TCP db ")
    assert q.as_text().startswith(reference_iso(q.time) + " 192.0.2.7 DNS/UDP dns ")


def test_stdout_lines_without_a_loop_are_written_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    r = AccessRecord(1_764_855_296.0, b"192.0.2.7", b"GET", b"/", "web")
    AccessLog().write(r)
    assert out.getvalue() == reference_text(r) + "\n"


async def test_stdout_lines_are_batched_then_flushed_by_the_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = AccessLog()
    rs = records(random.Random(3))[: logs.BATCH_LINES + 3]
    for r in rs[:3]:
        log.write(r)
    assert out.getvalue() == ""  # held back for one write
    for r in rs[3:]:
        log.write(r)
    full = "".join(reference_text(r) + "\n" for r in rs)
    # The batch filled at BATCH_LINES lines and went out in one write; 3 lines wait.
    assert out.getvalue() == full[: len(out.getvalue())]
    assert out.getvalue().count("\n") == logs.BATCH_LINES
    await asyncio.sleep(logs.BATCH_DELAY + 0.2)
    assert out.getvalue() == full


async def test_flush_writes_what_is_held_back(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = AccessLog()
    r = AccessRecord(1_764_855_296.0, b"192.0.2.7", b"GET", b"/", "web")
    log.write(r)
    assert out.getvalue() == ""
    log.flush()
    assert out.getvalue() == reference_text(r) + "\n"
    log.flush()  # nothing more
    assert out.getvalue() == reference_text(r) + "\n"


def test_milliseconds_match_the_float_formatting_at_ties_and_far_from_them() -> None:
    rng = random.Random(3)
    ties = [n / 20_000 for n in range(0, 4000)]  # 0.05 ms steps: every x.x5 and x.x0
    near = [t + d for t in ties[:500] for d in (-1e-12, 1e-12, -1e-9, 1e-9)]
    wide = [rng.uniform(0, 10) for _ in range(3000)] + [rng.expovariate(1000) for _ in range(3000)]
    huge = [1e6, 3.6e5 + 0.00005, 1e7, 1e12, float("inf")]
    for seconds in [*ties, *near, *wide, *huge, 0.0, -0.0, -1.0]:
        assert logs._ms(seconds) == f"{seconds * 1000:.1f}ms", seconds
