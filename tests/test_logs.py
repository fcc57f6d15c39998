"""The access log's writes to stdout at exit: one exit handler for the process, however many
logs are built (the lines themselves: tests/test_logs_format.py)."""

from __future__ import annotations

import atexit
import gc
import io
import subprocess
import sys

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
