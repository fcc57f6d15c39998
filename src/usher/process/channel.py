"""The control process's line to one worker: a Unix socket pair carrying small framed messages.

A message is one of the frozen dataclasses of usher.process.messages; it travels pickled behind a
4-byte length. Pickle is safe here because both ends are usher processes of one `usher run`
and the socket pair is never reachable by anyone else; it carries the validated `Config` as it
is, so a worker never re-reads or re-validates the file. The socket closing is news too: the
control sees a worker die, and a worker sees its control die (it then drains and exits, so no
worker serves on without a control).
"""

from __future__ import annotations

import asyncio
import pickle
import socket
import struct
from typing import Final

from usher.errors import ChannelClosed as ChannelClosed  # re-exported: its first home
from usher.process.messages import MESSAGE_TYPES, Message

_HEADER: Final = struct.Struct("!I")
# A config with thousands of backends pickles to well under this.
MAX_MESSAGE: Final = 64 * 1024 * 1024


class Channel:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, sock: socket.socket) -> Channel:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=MAX_MESSAGE)
        return cls(reader, writer)

    def send(self, message: Message) -> None:
        """Queue one message (never blocks; the socket buffer and the transport absorb it)."""
        if self._writer.is_closing():
            raise ChannelClosed("the channel is closed")
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._writer.write(_HEADER.pack(len(data)) + data)

    async def recv(self) -> Message:
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_MESSAGE:
                raise ChannelClosed(f"message of {size} bytes refused")
            data = await self._reader.readexactly(size)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise ChannelClosed("the other end closed the channel") from exc
        message = pickle.loads(data)
        if not isinstance(message, MESSAGE_TYPES):
            raise ChannelClosed(f"unexpected message {message!r}")
        return message

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError as exc:
            raise ChannelClosed("the other end closed the channel") from exc

    def close(self) -> None:
        self._writer.close()
