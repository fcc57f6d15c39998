"""Tests of the control-worker messages over the channel: each arrives as it was sent, and
anything that is not a message closes the channel."""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from collections.abc import AsyncIterator

import pytest

from usher.config import parse_config
from usher.metrics import Metrics
from usher.process.channel import Channel, ChannelClosed
from usher.process.messages import (
    MESSAGE_TYPES,
    Connections,
    Failed,
    Message,
    Ready,
    Reload,
    Reloaded,
    Scrape,
    Scraped,
    Start,
    State,
    Stop,
    WorkerOptions,
)
from usher.process.sync import BackendState, PoolsState

CONFIG = """
listeners: [{name: web, bind: "127.0.0.1:0", pool: p}]
pools: {p: {backends: [{address: "127.0.0.1:9001"}]}}
"""


@pytest.fixture
async def ends() -> AsyncIterator[tuple[Channel, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    channel = await Channel.open(ours)
    yield channel, theirs
    channel.close()
    theirs.close()


def every_message() -> list[Message]:
    config = parse_config(CONFIG)
    backend = BackendState("127.0.0.1:9001", 1, False, None, "enabled", True, "", None, 0)
    state: PoolsState = {"p": (backend,)}
    return [
        Start(config, state, WorkerOptions(access_log=True, log_format="json"), (3, 4)),
        State(state),
        Reload(config),
        Scrape(7),
        Stop(),
        Ready(("http://127.0.0.1:8080",)),
        Failed("cannot bind"),
        Reloaded(None),
        Scraped(7, Metrics().snapshot(), {"web": 2}),
        Connections({"web": 1}),
    ]


def test_every_message_kind_is_listed() -> None:
    assert {type(message) for message in every_message()} == set(MESSAGE_TYPES)


async def test_each_message_arrives_as_it_was_sent(ends: tuple[Channel, socket.socket]) -> None:
    channel, theirs = ends
    other = await Channel.open(theirs)
    try:
        for message in every_message():
            other.send(message)
            received = await channel.recv()
            assert type(received) is type(message)
            assert received == message
    finally:
        other.close()
        await asyncio.sleep(0)  # the transport closes on the next turn of the loop


async def test_anything_else_closes_the_channel(ends: tuple[Channel, socket.socket]) -> None:
    channel, theirs = ends
    data = pickle.dumps(("ready", ["http://127.0.0.1:8080"]))
    theirs.sendall(struct.pack("!I", len(data)) + data)
    with pytest.raises(ChannelClosed, match="unexpected message"):
        await channel.recv()
