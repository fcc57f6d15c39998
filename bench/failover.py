"""Failover: kill one of three backends under a steady request loop and measure how long usher
takes to take it out (active checks, and passive ejection on its own), and what clients saw.

    python bench/failover.py [--interval 1s] [--threshold 3] [--rate 200]

Everything runs in this process on 127.0.0.1: three demo backends, the balancer, a client
sending `--rate` requests per second for a few seconds around the kill.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import httpx
import uvloop
import yaml

from usher.config import parse_config
from usher.demo.origin import BackendOptions, start_backend
from usher.server import Balancer


async def scenario(mode: str, interval: str, threshold: int, rate: int) -> dict[str, Any]:
    servers = [await start_backend(options=BackendOptions(name=n)) for n in "ABC"]
    pool: dict[str, Any] = {"backends": [{"address": f"127.0.0.1:{s.port}"} for s in servers]}
    if mode == "active":
        pool["health_check"] = {
            "type": "http",
            "interval": interval,
            "timeout": "500ms",
            "unhealthy_threshold": threshold,
        }
        pool["passive_health"] = {"max_fails": 0}  # measure the checks alone
    config = {
        "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
        "pools": {"p": pool},
    }
    balancer = Balancer(parse_config(yaml.safe_dump(config)))
    await balancer.start()
    url = balancer.bound["web"].url + "/"
    victim = servers[1]
    label = f"127.0.0.1:{victim.port}"
    ejected_at: list[float] = []
    balancer.pools["p"].on_state_change.append(
        lambda b, old, new, why: ejected_at.append(time.monotonic()) if b.label == label else None
    )
    statuses: list[int] = []
    errors = 0
    killed_at = 0.0
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            start = time.monotonic()
            while time.monotonic() - start < 6.0:
                if not killed_at and time.monotonic() - start > 1.0:
                    await victim.close()
                    killed_at = time.monotonic()
                try:
                    statuses.append((await client.get(url)).status_code)
                except httpx.HTTPError:
                    errors += 1
                await asyncio.sleep(1 / rate)
    finally:
        await balancer.stop(timeout=1)
        for server in servers:
            await server.close()
    return {
        "mode": mode,
        "requests": len(statuses) + errors,
        "failed": errors + sum(1 for s in statuses if s >= 500),
        "ejected_after_ms": round((ejected_at[0] - killed_at) * 1000) if ejected_at else None,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--interval", default="1s", help="active check interval")
    parser.add_argument("--threshold", type=int, default=3, help="unhealthy_threshold")
    parser.add_argument("--rate", type=int, default=200, help="client requests per second")
    args = parser.parse_args()
    print(f"| {'mode':<8} | {'requests':>8} | {'failed':>6} | {'death to ejection':>17} |")
    print(f"|{'-' * 10}|{'-' * 10}|{'-' * 8}|{'-' * 19}|")
    for mode in ("passive", "active"):
        r = await scenario(mode, args.interval, args.threshold, args.rate)
        after = f"{r['ejected_after_ms']} ms" if r["ejected_after_ms"] is not None else "never"
        print(f"| {mode:<8} | {r['requests']:>8} | {r['failed']:>6} | {after:>17} |")
    print(
        f"\nactive: http checks every {args.interval}, unhealthy_threshold {args.threshold}, "
        "no passive ejection; passive: max_fails 1 (the default), no active checks."
    )


if __name__ == "__main__":
    uvloop.run(main())
