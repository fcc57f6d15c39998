"""Schemathesis against the live admin API's own OpenAPI: whatever it is sent, it never answers
with a server error, and its answers match the schema it publishes.

Schemathesis calls the API synchronously, so the balancer runs on its own loop in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
import uvloop
import yaml
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    allow_header_conformance,
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from tests.conftest import pool_of, simple_config
from usher.admin.api import create_app
from usher.config import load_config, parse_config
from usher.demo.origin import BackendOptions, start_backend
from usher.server import Balancer


class BalancerThread(threading.Thread):
    """A balancer with an admin API and two demo backends, on a loop of its own."""

    def __init__(self, config_path: Path) -> None:
        super().__init__(name="admin-api-under-test", daemon=True)
        self.config_path = config_path
        self.admin_url = ""
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None

    def run(self) -> None:
        loop = uvloop.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self.error = exc
        finally:
            self.ready.set()
            loop.close()

    async def _serve(self) -> None:
        self._done = asyncio.Event()
        servers = [await start_backend("127.0.0.1", 0, BackendOptions(name=n)) for n in "AB"]
        # 127.0.0.1:9001 is the address the schema's examples name: let them find it.
        config = simple_config({"web": pool_of(*servers, "127.0.0.1:9001")})
        config["admin"] = {"bind": "127.0.0.1:0"}
        self.config_path.write_text(yaml.safe_dump(config))
        balancer = Balancer(load_config(self.config_path), config_path=self.config_path)
        await balancer.start()
        try:
            assert balancer.admin_url is not None
            self.admin_url = balancer.admin_url
            self.ready.set()
            await self._done.wait()
        finally:
            await balancer.stop(timeout=1.0)
            for server in servers:
                await server.close()

    def stop(self) -> None:
        if self._loop is not None and self._done is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._done.set)
        self.join(timeout=10)


@pytest.fixture(scope="module")
def admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    thread = BalancerThread(tmp_path_factory.mktemp("schemathesis") / "usher.yaml")
    thread.start()
    assert thread.ready.wait(10), "the balancer did not start"
    if thread.error is not None:
        raise thread.error
    yield thread.admin_url
    thread.stop()
    assert not thread.is_alive()
    if thread.error is not None:
        raise thread.error


def published_schema() -> dict[str, Any]:
    """The OpenAPI document the admin app publishes; the live one is checked to be the same."""
    config = simple_config({"web": pool_of("127.0.0.1:9001")})
    config["admin"] = {"bind": "127.0.0.1:0"}
    app = create_app(Balancer(parse_config(yaml.safe_dump(config))))
    return json.loads(json.dumps(app.openapi()))


OPENAPI = published_schema()
schema = schemathesis.openapi.from_dict(OPENAPI)


def test_the_live_schema_is_the_one_tested(admin_url: str) -> None:
    assert httpx.get(f"{admin_url}/openapi.json", timeout=10).json() == OPENAPI


@schema.parametrize()
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_admin_api_never_fails_on_any_input(case: schemathesis.Case, admin_url: str) -> None:
    case.call_and_validate(
        base_url=admin_url,
        timeout=10,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
            # What the schema allows is accepted and what it does not is refused.
            positive_data_acceptance,
            negative_data_rejection,
            unsupported_method,
            allow_header_conformance,
        ],
    )
