"""What a serving process does with the objects it made while starting.

The cyclic garbage collector's full collections walk every tracked object. A serving process
holds a large heap that never becomes garbage (the config models, pydantic, FastAPI, the routes,
the pools), and each request leaves a few short-lived cycles (an exchange and the owners that
point back at it), so full collections keep coming and each one walked that whole heap: in
`make bench` they showed as p99 pauses of 15-25 ms against a p50 under 2 ms. Frozen objects sit
in a permanent generation that collections skip, so a pause covers only what serving made.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect what start-up left as garbage, then freeze everything still alive (gc.freeze)."""
    gc.collect()
    gc.freeze()
