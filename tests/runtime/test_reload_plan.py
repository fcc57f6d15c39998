"""The reload plan: what a reload from one config to another changes, computed without sockets."""

from __future__ import annotations

from typing import Any

import yaml

from usher.config import Config, parse_config
from usher.runtime.reload import (
    ADMIN_NOTE,
    CLUSTER_NOTE,
    as_bound,
    overwritten,
    plan,
)


def cfg(listeners: list[dict[str, Any]], pools: dict[str, Any], **rest: Any) -> Config:
    return parse_config(yaml.safe_dump({"listeners": listeners, "pools": pools, **rest}))


def pool(*addresses: str, **options: Any) -> dict[str, Any]:
    return {"backends": [{"address": a} for a in addresses], **options}


def http(name: str, bind: str, pool_name: str = "web", **options: Any) -> dict[str, Any]:
    return {"name": name, "bind": bind, "protocol": "http", "pool": pool_name, **options}


POOLS = {"web": pool("127.0.0.1:9001", "127.0.0.1:9002")}


def test_the_same_config_keeps_everything_and_restarts_the_checkers() -> None:
    config = cfg([http("a", "127.0.0.1:8001"), http("b", "127.0.0.1:8002")], POOLS)
    step = plan(config, config, {"a": 8001, "b": 8002})
    assert step.listeners_keep == ("a", "b")
    assert step.listeners_bind == step.listeners_close == step.listeners_removed == ()
    assert step.pools_reconfigure == ("web",)
    assert step.pools_add == step.pools_retire == ()
    assert step.checkers_restart == ("web",)
    assert step.notes == ()
    assert step.config is config


def test_listeners_are_added_removed_and_rebound_at_a_new_address() -> None:
    old = cfg([http("a", "127.0.0.1:8001"), http("b", "127.0.0.1:8002")], POOLS)
    new = cfg([http("b", "127.0.0.1:8012"), http("c", "127.0.0.1:8003")], POOLS)
    step = plan(old, new, {"a": 8001, "b": 8002})
    assert step.listeners_keep == ()
    assert step.listeners_bind == ("b", "c")
    assert step.listeners_close == ("a", "b")
    assert step.listeners_removed == ("a",)  # b is replaced by its new socket


def test_a_new_protocol_or_proxy_header_needs_a_new_socket() -> None:
    old = cfg([http("a", "127.0.0.1:8001"), http("b", "127.0.0.1:8002")], POOLS)
    new = cfg(
        [
            {"name": "a", "bind": "127.0.0.1:8001", "protocol": "tcp", "pool": "web"},
            http("b", "127.0.0.1:8002", accept_proxy_protocol=True),
        ],
        POOLS,
    )
    step = plan(old, new, {})
    assert step.listeners_bind == ("a", "b")
    assert step.listeners_close == ("a", "b")
    assert step.listeners_removed == ()


def test_port_zero_keeps_its_socket_whether_the_new_file_says_0_or_the_port_it_got() -> None:
    old = cfg([http("a", "127.0.0.1:0"), http("b", "127.0.0.1:0")], POOLS)
    new = cfg([http("a", "127.0.0.1:0"), http("b", "127.0.0.1:40123")], POOLS)
    step = plan(old, new, {"a": 40111, "b": 40123})
    assert step.listeners_keep == ("a", "b")
    # Not bound yet (a reload before start): only port 0 again keeps it.
    assert plan(old, new, {}).listeners_keep == ("a",)


def test_pools_are_added_reconfigured_and_retired_in_config_order() -> None:
    old = cfg(
        [http("a", "127.0.0.1:8001")],
        {"web": pool("127.0.0.1:9001"), "old": pool("127.0.0.1:9002"), "x": pool("h:1")},
    )
    new = cfg(
        [http("a", "127.0.0.1:8001", pool_name="new")],
        {"new": pool("127.0.0.1:9003"), "web": pool("127.0.0.1:9004"), "z": pool("h:2")},
    )
    step = plan(old, new, {"a": 8001})
    assert step.pools_add == ("new", "z")
    assert step.pools_reconfigure == ("web",)
    assert step.pools_retire == ("old", "x")
    assert step.checkers_restart == ("new", "web", "z")


def test_admin_and_cluster_changes_wait_for_a_restart() -> None:
    old = cfg([http("a", "127.0.0.1:8001")], POOLS, admin={"bind": "127.0.0.1:9900"})
    new = cfg(
        [http("a", "127.0.0.1:8001")],
        POOLS,
        admin={"bind": "127.0.0.1:9911"},
        cluster={"redis": "redis://127.0.0.1:6379/0"},
    )
    step = plan(old, new, {"a": 8001})
    assert step.notes == (CLUSTER_NOTE, ADMIN_NOTE)
    # The admin section that runs stays described, so the next reload notes it again.
    assert step.config.admin == old.admin
    assert step.config.cluster == new.cluster
    assert step.config.pools == new.pools


def test_as_bound_puts_in_the_port_port_zero_got() -> None:
    config = cfg([http("a", "127.0.0.1:0"), http("b", "127.0.0.1:8002")], POOLS)
    a, b = config.listeners
    assert as_bound(a, 40111).bind.port == 40111
    assert as_bound(a, None) is a
    assert as_bound(b, 40111) is b


def test_overwritten_names_the_runtime_changes_the_file_undoes() -> None:
    config = cfg(
        [http("a", "127.0.0.1:8001")],
        {"web": {"backends": [{"address": "127.0.0.1:9001", "weight": 3}, {"address": "h:2"}]}},
    )
    changes = [
        ("web", "127.0.0.1:9009", "added"),
        ("web", "127.0.0.1:9001", "removed"),
        ("web", "127.0.0.1:9001", "weight 5"),
        ("web", "127.0.0.1:9001", "weight 3"),  # what the file says: nothing lost
        ("gone", "127.0.0.1:9001", "removed"),  # its pool is gone: so is it
    ]
    assert overwritten(changes, config) == [
        "web/127.0.0.1:9009: added at runtime, not in the file: removed",
        "web/127.0.0.1:9001: removed at runtime, in the file: back",
        "web/127.0.0.1:9001: weight 5 at runtime, 3 in the file",
    ]
