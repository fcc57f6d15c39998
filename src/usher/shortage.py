"""Telling usher's own shortage of descriptors or buffers from a backend's fault.

Creating a socket or a pipe fails with EMFILE/ENFILE (no descriptor left in the process or the
system) or ENOBUFS/ENOMEM (no kernel memory) whatever the backend: counting that as a backend
failure would eject healthy backends one after the other. Callers refuse the client instead,
with the reason `out_of_files` or `out_of_memory`, and say so in the log once per burst.
"""

from __future__ import annotations

import errno
import logging
from typing import Final

from usher.bursts import BurstLog

log = logging.getLogger("usher.shortage")

_REASONS: Final = {
    errno.EMFILE: "out_of_files",
    errno.ENFILE: "out_of_files",
    errno.ENOBUFS: "out_of_memory",
    errno.ENOMEM: "out_of_memory",
}
# A shortage logged less than this long ago is counted, not logged again.
QUIET: Final = 10.0

_bursts = BurstLog(QUIET)


def local_reason(exc: BaseException) -> str | None:
    """`out_of_files` or `out_of_memory` when `exc` (or what caused it) is usher's own
    shortage, else None."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _REASONS:
            return _REASONS[seen.errno]
        seen = seen.__cause__ or seen.__context__
    return None


def report(where: str, reason: str, exc: BaseException) -> None:
    """Log a shortage at most once per `QUIET` seconds for each `where`, with the count of
    the ones in between."""
    also = _bursts.admit(where)
    if also is not None:
        log.error("%s: %s, refusing: %s%s", where, reason.replace("_", " "), exc, also)
