"""The key a consistent_hash pool hashes a request on, taken from the request by the HTTP side."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from usher.config import PoolConfig, parse_config
from usher.http.events import Request
from usher.http.request_key import hash_key

REQUEST = Request(
    b"GET",
    b"/cart/42?page=2",
    b"1.1",
    [(b"Host", b"shop"), (b"X-User", b"ann"), (b"Cookie", b"a=1; session=s-9")],
)
CLIENT = b"10.0.0.7"


def pool(**options: Any) -> PoolConfig:
    config = parse_config(
        yaml.safe_dump(
            {
                "listeners": [{"name": "web", "bind": "127.0.0.1:0", "pool": "p"}],
                "pools": {"p": {"backends": [{"address": "127.0.0.1:9001"}], **options}},
            }
        )
    )
    return config.pools["p"]


@pytest.mark.parametrize(
    ("hash_options", "key"),
    [
        ({}, CLIENT),  # source_ip by default
        ({"key": "path"}, b"/cart/42"),  # without the query
        ({"key": "header", "name": "x-user"}, b"ann"),  # any case
        ({"key": "cookie", "name": "session"}, b"s-9"),
        ({"key": "header", "name": "X-Absent"}, None),
        ({"key": "cookie", "name": "absent"}, None),
    ],
)
def test_a_consistent_hash_pool_keys_on_what_it_says(
    hash_options: dict[str, str], key: bytes | None
) -> None:
    config = pool(algorithm="consistent_hash", hash=hash_options)
    assert hash_key(config, REQUEST, CLIENT) == key


def test_other_algorithms_take_no_key() -> None:
    assert hash_key(pool(algorithm="round_robin"), REQUEST, CLIENT) is None
