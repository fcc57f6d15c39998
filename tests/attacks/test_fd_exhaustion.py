"""Running out of file descriptors: usher, started with a low RLIMIT_NOFILE, is flooded with
more connections than it has descriptors. It refuses the excess (503, or a reset at the
limit itself), logs once per burst, never crashes, keeps serving the clients it has, and
serves new ones once the flood ends."""

from __future__ import annotations

import asyncio
import resource
from collections import Counter

from tests.attacks.conftest import connect
from tests.conftest import read_response

NOFILE = 128


def low_nofile() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))


async def test_descriptor_exhaustion(start_usher, normal_traffic, record):
    usher = start_usher(preexec_fn=low_nofile)
    # A client connected before the flood keeps its connection (and usher its backend one).
    normal = normal_traffic(usher.port, 3.0)
    await asyncio.sleep(0.3)
    seen: Counter[str] = Counter()
    held = []

    async def one() -> None:
        try:
            reader, writer = await connect(usher.port)
        except OSError:
            seen["connect failed"] += 1
            return
        try:
            answer = await asyncio.wait_for(read_response(reader), 0.5)
        except TimeoutError:
            seen["accepted"] += 1
            held.append(writer)
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            seen["reset"] += 1
        else:
            seen[str(answer.status)] += 1
        writer.close()

    for _ in range(6):
        await asyncio.gather(*(one() for _ in range(50)))
    assert usher.proc.poll() is None, usher.stderr
    for writer in held:
        writer.close()
    result = await normal.result()
    record(f"descriptor exhaustion (300 connections, RLIMIT_NOFILE {NOFILE})", dict(seen), result)
    assert usher.proc.poll() is None, usher.stderr
    assert seen["accepted"] < NOFILE and seen["503"] > 0, seen
    logged = [line for line in usher.lines if "file descriptors in use" in line]
    assert len(logged) == 1, usher.stderr  # one burst, one line
    assert result["success_rate"] == 1.0 and result["requests"] > 50, result
    # And once the flood is gone, new clients are served again.
    after = await normal_traffic(usher.port, 1.0).result()
    assert after["success_rate"] == 1.0 and after["requests"] > 20, after
