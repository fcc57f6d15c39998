"""Operator changes are checked into ChangeError before anything changes."""

from __future__ import annotations

import pytest
import yaml

from usher.clock import ManualClock
from usher.config import parse_config
from usher.errors import ChangeError
from usher.pool import Pool
from usher.runtime import changes


def pools() -> dict[str, Pool]:
    config = parse_config(
        yaml.safe_dump(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "web"}],
                "pools": {
                    "web": {"backends": [{"address": "127.0.0.1:9001"}]},
                    "api": {"backends": [{"address": "127.0.0.1:9002"}]},
                },
            }
        )
    )
    return {name: Pool(name, cfg, ManualClock()) for name, cfg in config.pools.items()}


def test_an_unknown_pool_is_a_404_that_lists_the_known_ones() -> None:
    with pytest.raises(ChangeError) as caught:
        changes.find_pool(pools(), "nope")
    assert caught.value.status == 404
    assert caught.value.detail == "no pool 'nope' (known: api, web)"


def test_an_unknown_backend_is_a_404_naming_the_pool() -> None:
    with pytest.raises(ChangeError) as caught:
        changes.find_backend(pools(), "web", "127.0.0.1:1")
    assert (caught.value.status, caught.value.detail) == (404, "no backend 127.0.0.1:1 in pool web")
    pool, backend = changes.find_backend(pools(), "web", "127.0.0.1:9001")
    assert (pool.name, backend.label) == ("web", "127.0.0.1:9001")


def test_a_new_backend_is_validated_as_the_file_would_be() -> None:
    pool = pools()["web"]
    config = changes.new_backend(pool, "127.0.0.1:9003", weight=3, backup=True, max_connections=10)
    assert (str(config.address), config.weight, config.backup, config.max_connections) == (
        "127.0.0.1:9003",
        3,
        True,
        10,
    )
    with pytest.raises(ChangeError) as caught:
        changes.new_backend(pool, "no-port", weight=1, backup=False, max_connections=None)
    assert caught.value.status == 400
    assert caught.value.detail.startswith("address: ")
    with pytest.raises(ChangeError) as caught:
        changes.new_backend(pool, "127.0.0.1:9003", weight=0, backup=False, max_connections=None)
    assert caught.value.status == 400
    assert caught.value.detail.startswith("weight: ")


def test_a_backend_already_in_the_pool_is_a_409() -> None:
    with pytest.raises(ChangeError) as caught:
        changes.new_backend(
            pools()["web"], "127.0.0.1:9001", weight=1, backup=False, max_connections=None
        )
    assert (caught.value.status, caught.value.detail) == (
        409,
        "backend 127.0.0.1:9001 is already in pool web",
    )


@pytest.mark.parametrize("weight", [0, -2])
def test_a_weight_must_be_positive(weight: int) -> None:
    with pytest.raises(ChangeError) as caught:
        changes.checked_weight(weight)
    assert (caught.value.status, caught.value.detail) == (
        400,
        f"weight must be > 0 (got {weight})",
    )
    assert changes.checked_weight(5) == 5


def test_an_operator_sets_enabled_draining_or_disabled_only() -> None:
    assert [changes.checked_state(s) for s in ("enabled", "draining", "disabled")] == [
        "enabled",
        "draining",
        "disabled",
    ]
    with pytest.raises(ChangeError) as caught:
        changes.checked_state("healthy")
    assert caught.value.status == 400
    assert caught.value.detail == "state must be enabled, draining or disabled (got 'healthy')"
