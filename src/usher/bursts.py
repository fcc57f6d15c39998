"""Logging once per burst: a message that would repeat with every request (a shortage, a
failing hook) is logged the first time, then only counted until it has been quiet a while; the
next message says how many were left out."""

from __future__ import annotations

import time
from collections.abc import Hashable


class BurstLog:
    """For each key: log now, or count and stay quiet (a key logged less than `quiet`
    seconds ago)."""

    __slots__ = ("_last", "_left_out", "quiet")

    def __init__(self, quiet: float) -> None:
        self.quiet = quiet
        self._last: dict[Hashable, float] = {}
        self._left_out: dict[Hashable, int] = {}

    def admit(self, key: Hashable) -> str | None:
        """None: stay quiet (counted). Else log now, adding the returned text: "" or
        " (N more since the last message)"."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.quiet:
            self._left_out[key] = self._left_out.get(key, 0) + 1
            return None
        self._last[key] = now
        more = self._left_out.pop(key, 0)
        return f" ({more} more since the last message)" if more else ""
