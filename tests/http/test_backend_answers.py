"""Answers from a backend that usher must not relay: a status outside 100-599 and a 101
nobody asked for become a 502, and the backend connection is closed (issue 12, items 7, 10)."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import pool_of, raw_exchange, read_request_head, simple_config


@pytest.mark.parametrize("status", [b"099", b"000", b"600", b"999", b"1000"])
async def test_a_status_outside_100_to_599_is_answered_502(raw_backend, balancer, status):
    async def odd_status(reader, writer):
        await read_request_head(reader)
        writer.write(b"HTTP/1.1 " + status + b" Odd\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read()

    port = await raw_backend(odd_status)
    lb = await balancer(simple_config({"web": pool_of(f"127.0.0.1:{port}")}))
    (response,), _ = await raw_exchange(lb.port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert response.status == 502
    assert b"HTTP/1.1 " + status not in response.body
