"""Fixtures of these tests: TLS test servers, datagram endpoints."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.tls_helpers import tls_server

__all__ = ["tls_server"]


@pytest.fixture
async def udp() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """Opens datagram endpoints (clients, backends) and closes them after the test."""
    transports: list[asyncio.BaseTransport] = []
    loop = asyncio.get_running_loop()

    async def start(protocol: Any, **kwargs: Any) -> Any:
        transport, _ = await loop.create_datagram_endpoint(lambda: protocol, **kwargs)
        transports.append(transport)
        return transport

    yield start
    for transport in transports:
        transport.close()
