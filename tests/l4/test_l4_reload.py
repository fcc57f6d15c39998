"""Layer-4 listeners start and stop with reloads like http ones."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.l4.test_tcp import StartBackend, StartBalancer, echo, tcp_config
from usher.config import parse_config


async def test_reload_adds_changes_and_removes_tcp_and_udp_listeners(
    raw_backend: StartBackend, balancer: StartBalancer
) -> None:
    one, two = await raw_backend(echo), await raw_backend(echo)
    b = await balancer(
        {
            "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
            "pools": {"p": {"backends": [{"address": f"127.0.0.1:{one}"}]}},
        }
    )
    config: dict[str, Any] = tcp_config(one)
    config["listeners"].append(
        {"name": "dns", "bind": "127.0.0.1:0", "protocol": "udp", "pool": "p"}
    )
    report = await b.balancer.reload(parse_config(json.dumps(config)))
    assert sorted(report.listeners_added) == ["db", "dns"]
    port = b.balancer.bound["db"].port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"
    # A reload that changes the pool: the open connection goes on, new ones use the new one.
    config["pools"]["p"]["backends"] = [{"address": f"127.0.0.1:{two}"}]
    report = await b.balancer.reload(parse_config(json.dumps(config)))
    assert "db" in report.listeners_kept
    writer.write(b"b")
    assert await reader.readexactly(1) == b"b"
    r2, w2 = await asyncio.open_connection("127.0.0.1", port)
    w2.write(b"c")
    assert await r2.readexactly(1) == b"c"
    session = next(
        s for s in b.balancer.listeners["db"].connections if s.record.backend.endswith(str(two))
    )
    assert session is not None
    w2.close()
    writer.close()
    # Removing the listeners closes their sockets.
    await b.balancer.reload(
        parse_config(
            json.dumps(
                {
                    "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
                    "pools": {"p": {"backends": [{"address": f"127.0.0.1:{two}"}]}},
                }
            )
        )
    )
    assert set(b.balancer.listeners) == {"web"}
    # The socket closes as soon as its accept loop has stopped (the next turn of the loop).
    for _ in range(100):
        try:
            _, w3 = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            break
        w3.close()
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the removed tcp listener still accepts")
