"""Scenario files: shorthand forms, and every problem reported with its path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.simulate.helpers import ADDRESSES, config, three_backends
from usher.errors import ConfigError
from usher.simulate.scenario import check_against, parse_scenario

BASE = "duration: 5s\narrivals: {concurrency: 4}\n"


def problems(text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as caught:
        parse_scenario(text)
    assert "in the scenario" in str(caught.value)
    return [(issue.path, issue.message) for issue in caught.value.issues]


def test_the_minimal_form_of_the_design() -> None:
    text = BASE + three_backends() + "algorithms: [round_robin, least_connections, p2c]\n"
    scenario = parse_scenario(text)
    assert scenario.duration == 5.0
    assert scenario.backends[ADDRESSES[2]].latency.fixed == 0.02
    assert scenario.algorithms == ["round_robin", "least_connections", "p2c"]
    assert check_against(scenario, config()) == "p"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("duration: 5s\n" + three_backends(), [("arrivals", "Field required")]),
        (
            "duration: 5s\narrivals: {concurrency: 4, rate: 10/s}\n" + three_backends(),
            [("arrivals", "give either concurrency (closed loop) or rate (open loop)")],
        ),
        (
            BASE + three_backends(slow="{gamma: 2ms}"),
            [('backends["127.0.0.1:9003"].latency.gamma', "Extra inputs are not permitted")],
        ),
        (
            BASE + three_backends(slow="{normal: {mean: 2ms}}"),
            [('backends["127.0.0.1:9003"].latency.normal.stddev', "Field required")],
        ),
        (
            BASE + three_backends(slow="soon"),
            [
                (
                    'backends["127.0.0.1:9003"].latency.fixed',
                    "invalid duration 'soon' (use e.g. 250ms, 5s, 2m)",
                )
            ],
        ),
        (
            BASE
            + three_backends(extra="events: [{at: 3s, until: 2s, down: true}]").replace(
                "events", "fail_rate: 2, events", 1
            ),
            [
                ('backends["127.0.0.1:9001"].fail_rate', "Input should be less than or equal to 1"),
                ('backends["127.0.0.1:9001"].events[0]', "until must be after at"),
                ('backends["127.0.0.1:9002"].events[0]', "until must be after at"),
                ('backends["127.0.0.1:9003"].events[0]', "until must be after at"),
            ],
        ),
        (
            BASE + three_backends() + "algorithms: [round_robin, fastest]\n",
            [("algorithms[1]", "unknown algorithm 'fastest'")],
        ),
    ],
)
def test_problems_are_reported_at_their_paths(text: str, expected: list[tuple[str, str]]) -> None:
    found = problems(text)
    assert [path for path, _ in found] == [path for path, _ in expected]
    for (_, message), (_, wanted) in zip(found, expected, strict=True):
        assert message.startswith(wanted), message


def test_the_scenario_must_model_the_pool_it_replays() -> None:
    text = BASE + (
        "backends:\n"
        f'  "{ADDRESSES[0]}": {{latency: 2ms}}\n'
        '  "127.0.0.1:9009": {latency: 2ms}\n'
        '  "nowhere": {latency: 2ms}\n'
    )
    with pytest.raises(ConfigError) as caught:
        check_against(parse_scenario(text), config())
    issues = [(i.path, i.message) for i in caught.value.issues]
    assert issues[0][0] == 'backends["127.0.0.1:9009"]'
    assert issues[0][1].startswith("not a backend of pool p (its backends: 127.0.0.1:9001")
    assert issues[1][0] == "backends.nowhere"
    assert issues[2:] == [
        ("backends", "pool p's backend 127.0.0.1:9002 is not modelled"),
        ("backends", "pool p's backend 127.0.0.1:9003 is not modelled"),
    ]


def test_an_unknown_pool_is_named() -> None:
    scenario = parse_scenario(BASE + "pool: api\n" + three_backends())
    with pytest.raises(ConfigError, match=r"pool: no pool 'api' in the config \(known: p\)"):
        check_against(scenario, config())


def test_the_scenario_in_the_docs_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    root = Path(__file__).resolve().parents[2]
    monkeypatch.syspath_prepend(str(root / "examples" / "algorithms"))  # for "pinned:Pinned"
    page = (root / "docs" / "simulate.md").read_text()
    block = re.search(r"## The scenario file\n\n```yaml\n(.*?)```", page, re.S)
    assert block is not None
    scenario = parse_scenario(block.group(1))
    assert scenario.algorithms == ["round_robin", "least_connections", "p2c", "pinned:Pinned"]
    assert len(scenario.backends[ADDRESSES[2]].events) == 3
