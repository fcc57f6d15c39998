"""HTTP/2 attacks, each bounded: rapid reset (CVE-2023-44487), CONTINUATION flood, PING and
SETTINGS floods, HPACK bomb, too many concurrent streams, a zero-window stall. Each ends in a
GOAWAY (or a reset of the stalled stream), and another client on the same listener is served
throughout."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import hpack
import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame

from tests.conftest import RunningBalancer, pool_of, simple_config
from tests.http.h2_client import H2Client
from usher.demo.origin import BackendServer
from usher.http.h2_downstream import MAX_CONCURRENT_STREAMS, MAX_CONTROL_FRAMES, MAX_RESETS
from usher.http.h2_stream import HIGH_WATER

StartBalancer = Callable[..., Awaitable[RunningBalancer]]
StartBackends = Callable[..., Awaitable[list[BackendServer]]]

REQUEST = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"www.example.test"),
    (b":path", b"/"),
]


async def _start(backends: StartBackends, balancer: StartBalancer, **listener: Any) -> int:
    return (await _running(backends, balancer, **listener)).port


async def _running(
    backends: StartBackends, balancer: StartBalancer, **listener: Any
) -> RunningBalancer:
    (server,) = await backends(1)
    return await balancer(simple_config({"web": pool_of(server)}, http2=True, **listener))


async def _ends_in_goaway(attacker: H2Client, code: ErrorCodes, port: int) -> None:
    """The attacker gets a GOAWAY with `code` and is closed; a new client is served."""
    await attacker.wait_closed(10)
    assert attacker.goaway is not None
    assert attacker.goaway.error_code == code
    bystander = await H2Client.open(port)
    try:
        assert (await bystander.get("/")).status == 200
    finally:
        await bystander.close()
        await attacker.close()


async def test_rapid_reset_ends_in_enhance_your_calm(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    port = await _start(backends, balancer)
    attacker = await H2Client.open(port)
    for _ in range(MAX_RESETS + 10):
        if attacker.ended:
            break
        sid = attacker.request("/sleep/1")
        attacker.reset(sid)
        await asyncio.sleep(0)
    await _ends_in_goaway(attacker, ErrorCodes.ENHANCE_YOUR_CALM, port)


def _ping(client: H2Client, i: int) -> None:
    client.h2.ping(i.to_bytes(8, "big"))


def _settings(client: H2Client, i: int) -> None:
    client.h2.update_settings({0x4: 65_535 + i % 2})  # INITIAL_WINDOW_SIZE, flip-flop


@pytest.mark.parametrize("frame", [_ping, _settings], ids=["ping", "settings"])
async def test_control_frame_flood_ends_in_enhance_your_calm(
    backends: StartBackends, balancer: StartBalancer, frame: Callable[[H2Client, int], None]
) -> None:
    """Each PING and SETTINGS makes us queue an ACK: a flood of them is cut off."""
    port = await _start(backends, balancer)
    attacker = await H2Client.open(port)
    for i in range(MAX_CONTROL_FRAMES + 10):
        frame(attacker, i)
    attacker.flush()
    await _ends_in_goaway(attacker, ErrorCodes.ENHANCE_YOUR_CALM, port)


async def test_continuation_flood_is_cut_off(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    port = await _start(backends, balancer)
    attacker = await H2Client.open(port)
    block = hpack.Encoder().encode(REQUEST)
    attacker.send_raw(HeadersFrame(1, data=block).serialize())  # no END_HEADERS
    junk = b"\x40\x01x\x01y"  # a literal header x: y, again and again
    for _ in range(1000):
        attacker.send_raw(ContinuationFrame(1, data=junk * 100).serialize())
        if attacker.ended:
            break
        await asyncio.sleep(0)
    await _ends_in_goaway(attacker, ErrorCodes.PROTOCOL_ERROR, port)


async def test_hpack_bomb_is_refused_by_the_header_list_size(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    port = await _start(backends, balancer, limits={"max_header_size": "16KiB"})
    attacker = await H2Client.open(port)
    encoder = hpack.Encoder()
    # One 4 KiB value in the dynamic table, then referenced a hundred times: a few hundred
    # bytes on the wire, 400 KiB decoded.
    headers = [*REQUEST, *([(b"x-bomb", b"b" * 4000)] * 100)]
    block = encoder.encode(headers)
    assert len(block) < 5000
    attacker.send_raw(HeadersFrame(1, data=block, flags=["END_HEADERS", "END_STREAM"]).serialize())
    await _ends_in_goaway(attacker, ErrorCodes.ENHANCE_YOUR_CALM, port)


async def test_too_many_concurrent_streams_end_the_connection(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    port = await _start(backends, balancer)
    attacker = await H2Client.open(port)
    encoder = hpack.Encoder()
    # Raw frames: h2's own client would refuse to open more than the server allows.
    for n in range(MAX_CONCURRENT_STREAMS + 1):
        path = [(b":path", b"/sleep/5")]
        frame = HeadersFrame(2 * n + 1, data=encoder.encode([*REQUEST[:3], *path]))
        frame.flags.add("END_HEADERS")
        frame.flags.add("END_STREAM")
        attacker.send_raw(frame.serialize())
    await _ends_in_goaway(attacker, ErrorCodes.PROTOCOL_ERROR, port)


async def test_a_zero_window_stall_resets_the_stream_after_the_send_timeout(
    backends: StartBackends, balancer: StartBalancer
) -> None:
    running = await _running(backends, balancer, timeouts={"send": "500ms"})
    port = running.port
    # INITIAL_WINDOW_SIZE 0: the client takes no byte of any answer.
    staller = await H2Client.open(port, settings={0x4: 0})
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        sid = staller.request(f"/bytes/{64 * HIGH_WATER}")
        await asyncio.sleep(0.3)
        (origin,) = running.balancer.listeners["web"].connections
        held = origin.h2.streams[sid].pending_size
        # Memory is bounded: the backend is no longer read past the high-water mark (give or
        # take what one read brings), whatever the size of the answer.
        assert HIGH_WATER < held <= HIGH_WATER + 256 * 1024
        answer = await staller.response(sid, timeout=10)
        assert answer.reset is not None  # cut, not left open
        assert 0.4 < loop.time() - start < 5
        assert staller.goaway is None  # the connection itself goes on
        bystander = await H2Client.open(port)
        assert (await bystander.get("/")).status == 200
        await bystander.close()
    finally:
        await staller.close()
