"""A config and scenario built from short YAML, for the simulator's tests."""

from __future__ import annotations

from textwrap import dedent

from usher.config import Config, parse_config
from usher.simulate.engine import Replay, RunResult
from usher.simulate.scenario import Scenario, check_against, parse_scenario

ADDRESSES = ["127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003"]


def config(pool_extra: str = "", listener_extra: str = "", backend_extra: str = "") -> Config:
    backends = ", ".join(f"{{address: {a}{backend_extra}}}" for a in ADDRESSES)
    return parse_config(
        "listeners: [{name: web, bind: 127.0.0.1:0, pool: p"
        + listener_extra
        + "}]\n"
        + f"pools:\n  p:\n    backends: [{backends}]\n"
        + "".join(f"    {line}\n" for line in dedent(pool_extra).splitlines() if line)
    )


def scenario(text: str) -> Scenario:
    return parse_scenario(dedent(text))


def replay(scn: Scenario, cfg: Config, algorithm: str = "round_robin") -> RunResult:
    return Replay(scn, cfg, check_against(scn, cfg), algorithm).run()


def three_backends(
    slow: str = "20ms", fast: str = "2ms", extra: str = "", slow_extra: str = ""
) -> str:
    """The backends section: two fast ones and a slow one, each with `extra` keys (and the
    slow one with `slow_extra` too)."""
    tail = f", {extra}" if extra else ""
    slow_tail = tail + (f", {slow_extra}" if slow_extra else "")
    return (
        "backends:\n"
        f'  "{ADDRESSES[0]}": {{latency: {fast}{tail}}}\n'
        f'  "{ADDRESSES[1]}": {{latency: {fast}{tail}}}\n'
        f'  "{ADDRESSES[2]}": {{latency: {slow}{slow_tail}}}\n'
    )
