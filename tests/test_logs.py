"""The access log's writes to stdout at exit: one exit handler for the process, however many
logs are built (the lines themselves: tests/test_logs_format.py); hpack's per-header debug
calls made a no-op at logging setup unless asked for."""

from __future__ import annotations

import atexit
import gc
import io
import logging
import subprocess
import sys
from collections.abc import Iterator

import hpack
import pytest

from usher import logs
from usher.logs import AccessLog, AccessRecord


def record() -> AccessRecord:
    return AccessRecord(1_764_855_296.0, b"192.0.2.7", b"GET", b"/", "web")


def test_building_logs_registers_no_exit_handler_each() -> None:
    before = atexit._ncallbacks()
    built = [AccessLog() for _ in range(100)]
    assert atexit._ncallbacks() == before
    del built


async def test_a_log_is_held_only_while_it_has_lines_to_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    log = AccessLog()
    log.write(record())  # held back: a loop is running
    assert log in logs._HOLDING
    log.flush()
    assert log not in logs._HOLDING
    assert out.getvalue().count("\n") == 1
    count = len(gc.get_referrers(log))
    log.write(record())
    log.flush()
    assert len(gc.get_referrers(log)) == count  # nothing kept it


def test_lines_held_back_are_written_at_exit() -> None:
    """Lines still held when the process ends (no flush, the loop gone) reach stdout, from
    every log that holds some."""
    code = (
        "import asyncio\n"
        "from usher.logs import AccessLog, AccessRecord\n"
        "async def main():\n"
        "    for path in (b'/one', b'/two'):\n"
        "        AccessLog().write(AccessRecord(0.0, b'192.0.2.7', b'GET', path, 'web'))\n"
        "asyncio.run(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = sorted(done.stdout.splitlines())
    assert len(lines) == 2, done
    assert '"GET /one"' in lines[0] and '"GET /two"' in lines[1], lines


@pytest.fixture
def hpack_loggers() -> Iterator[list[logging.Logger]]:
    """hpack's module loggers, their level and debug method as they were, after the test."""
    loggers = [logging.getLogger(name) for name in logs.QUIET_DEBUG_LOGGERS]
    levels = [logger.level for logger in loggers]
    yield loggers
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)
        logger.__dict__.pop("debug", None)


def _round_trip() -> None:
    encoder, decoder = hpack.Encoder(), hpack.Decoder()
    fields = [(b":status", b"200"), (b"content-type", b"text/plain"), (b"x-long", b"v" * 40)]
    assert decoder.decode(encoder.encode(fields), raw=True) == fields


def test_hpack_debug_calls_do_not_reach_logging_when_not_enabled(
    hpack_loggers: list[logging.Logger], monkeypatch: pytest.MonkeyPatch
) -> None:
    for logger in hpack_loggers:
        logger.setLevel(logging.INFO)
    logs.quiet_library_debug()
    calls: list[str] = []
    monkeypatch.setattr(logging.Logger, "isEnabledFor", lambda self, level: calls.append("x"))
    _round_trip()
    assert calls == []
    # Warnings and errors still go through logging as before.
    assert hpack_loggers[0].warning.__func__ is logging.Logger.warning  # type: ignore[attr-defined]


def test_hpack_debug_records_stay_when_a_user_asked_for_them(
    hpack_loggers: list[logging.Logger], caplog: pytest.LogCaptureFixture
) -> None:
    for logger in hpack_loggers:
        logger.setLevel(logging.DEBUG)
    logs.quiet_library_debug()
    with caplog.at_level(logging.DEBUG, logger="hpack"):
        _round_trip()
    assert any(record.name == "hpack.hpack" for record in caplog.records)
