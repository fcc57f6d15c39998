"""A raw HTTP/2 client for the tests, on the `h2` library: real sockets, every frame visible.

`H2Client.open(port)` speaks h2c with prior knowledge (or h2 over TLS with `ssl`); `request`
sends one stream; `response(sid)` waits for its answer. Frames the server sent that end the
connection (GOAWAY) land in `goaway`; resets in `resets`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

from h2.config import H2Configuration
from h2.connection import ConnectionState, H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

Headers = list[tuple[bytes, bytes]]


class Answer:
    """One stream's answer as it arrived."""

    def __init__(self) -> None:
        self.headers: Headers = []
        self.body = bytearray()
        self.trailers: Headers = []
        self.done = asyncio.Event()
        self.reset: int | None = None  # the RST_STREAM error code, if the server reset it

    @property
    def status(self) -> int:
        return int(dict(self.headers)[b":status"])

    def header(self, name: bytes) -> bytes | None:
        return dict(self.headers).get(name)


class H2Client:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, auto_ack: bool
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.h2 = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.answers: dict[int, Answer] = {}
        self.goaway: ConnectionTerminated | None = None
        self.closed = asyncio.Event()
        self.auto_ack = auto_ack  # give the window back as soon as DATA arrives
        self.unacked: dict[int, int] = {}
        self.window_updated = asyncio.Event()  # set by each WINDOW_UPDATE, cleared by a sender
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        auto_ack: bool = True,
        settings: dict[int, int] | None = None,
    ) -> H2Client:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1",
            port,
            ssl=ssl_context,
            server_hostname="www.example.test" if ssl_context else None,
        )
        client = cls(reader, writer, auto_ack=auto_ack)
        client.h2.initiate_connection()
        if settings:
            client.h2.update_settings(settings)
        client.flush()
        client._task = asyncio.get_running_loop().create_task(client._read())
        return client

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def send_raw(self, data: bytes) -> None:
        if not self.writer.is_closing():
            self.writer.write(data)

    @property
    def ended(self) -> bool:
        """The server sent GOAWAY or closed: an attack loop stops here."""
        return self.goaway is not None or self.closed.is_set()

    def request(
        self,
        path: str = "/",
        *,
        method: str = "GET",
        body: bytes | None = None,
        headers: Headers | None = None,
        end: bool = True,
        authority: str = "www.example.test",
    ) -> int:
        sid = self.h2.get_next_available_stream_id()
        fields: Headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
            *(headers or []),
        ]
        self.answers[sid] = Answer()
        self.h2.send_headers(sid, fields, end_stream=end and body is None)
        if body is not None:
            self.h2.send_data(sid, body, end_stream=end)
        self.flush()
        return sid

    def reset(self, sid: int) -> None:
        self.h2.reset_stream(sid)
        self.flush()

    async def response(self, sid: int, timeout: float = 10.0) -> Answer:
        answer = self.answers[sid]
        await asyncio.wait_for(answer.done.wait(), timeout)
        return answer

    async def get(self, path: str = "/", **kwargs: Any) -> Answer:
        return await self.response(self.request(path, **kwargs))

    def acknowledge(self, sid: int) -> None:
        """Give back the window of what stream `sid` received so far."""
        size = self.unacked.pop(sid, 0)
        if size:
            self.h2.acknowledge_received_data(size, sid)
            self.flush()

    async def wait_closed(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(self.closed.wait(), timeout)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self.writer.wait_closed()

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(65536)
                if not data:
                    break
                for event in self.h2.receive_data(data):
                    self._event(event)
                self.flush()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            self.closed.set()
            for answer in self.answers.values():
                answer.done.set()

    def _event(self, event: object) -> None:
        if isinstance(event, ResponseReceived):
            self.answers[event.stream_id].headers = list(event.headers)
        elif isinstance(event, DataReceived):
            answer = self.answers[event.stream_id]
            answer.body += event.data
            size = event.flow_controlled_length or 0
            if self.auto_ack:
                self.h2.acknowledge_received_data(size, event.stream_id)
            else:
                self.unacked[event.stream_id] = self.unacked.get(event.stream_id, 0) + size
        elif isinstance(event, TrailersReceived):
            self.answers[event.stream_id].trailers = list(event.headers)
        elif isinstance(event, StreamEnded):
            self.answers[event.stream_id].done.set()
        elif isinstance(event, StreamReset):
            answer = self.answers.get(event.stream_id)
            if answer is not None:
                answer.reset = int(event.error_code)
                answer.done.set()
        elif isinstance(event, WindowUpdated):
            self.window_updated.set()
        elif isinstance(event, ConnectionTerminated):
            self.goaway = event
            if event.error_code == 0:
                # h2 closes its side on any GOAWAY, though RFC 9113 §6.8 lets the streams up
                # to last_stream_id finish: reopen its state machine to read their answers.
                self.h2.state_machine.state = ConnectionState.CLIENT_OPEN
