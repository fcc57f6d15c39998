"""usher.bursts: a repeated message is logged once per burst, then counted."""

from __future__ import annotations

import pytest

from usher import bursts
from usher.bursts import BurstLog


def test_a_burst_is_logged_once_then_counted_in_the_next_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(bursts.time, "monotonic", lambda: now[0])
    log = BurstLog(10.0)
    assert log.admit("a") == ""  # the first: logged
    assert [log.admit("a") for _ in range(3)] == [None, None, None]  # the burst: counted
    assert log.admit("b") == ""  # each key its own
    now[0] += 9.9
    assert log.admit("a") is None
    now[0] += 0.2  # quiet long enough since the last message
    assert log.admit("a") == " (4 more since the last message)"
    assert log.admit("a") is None
