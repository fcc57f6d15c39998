"""One HTTP/2 stream as the transport of its own `ClientConnection`, so that the stream's
request goes through exactly what an HTTP/1.1 request goes through (reader limits, route,
filters, limits, persistence, header rewrites, the backend link, access log and metrics).

Both ways are translations: the stream's HEADERS become an HTTP/1.1 head (h2_headers) and its
DATA the body (chunked when no content-length was given); the exchange's answer, written as
HTTP/1.1 bytes, is read back with the codec's `ResponseReader` and sent as HEADERS, DATA and
trailers. Flow control both ways: the client's window opens only as the connection takes the
body (pause_reading holds the acknowledgements), and our DATA waits for the client's window,
pausing the exchange (so the backend) past a high-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import TYPE_CHECKING, Any, Final

from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from usher.errors import UpstreamProtocolError
from usher.http.codec import Data, EndOfMessage, Event, Headers, Response, ResponseReader
from usher.http.framing import encode_chunk, encode_last_chunk
from usher.http.h2_headers import response_fields, trailers_out

if TYPE_CHECKING:
    from h2.connection import H2Connection

    from usher.http.downstream import ClientConnection
    from usher.http.h2_downstream import H2Downstream

# Answer bytes held for one stream beyond the client's window before its exchange is paused
# (and with it the backend), and the level at which it resumes.
HIGH_WATER: Final = 64 * 1024
LOW_WATER: Final = 16 * 1024


class H2Stream(asyncio.Transport):
    """One stream of an HTTP/2 connection, seen by its `ClientConnection` as its transport."""

    def __init__(self, connection: H2Downstream, stream_id: int, method: bytes, chunked: bool):
        super().__init__()
        self.connection = connection
        self.h2: H2Connection = connection.h2
        self.stream_id = stream_id
        self.chunked = chunked  # the request body goes on as chunks (no content-length)
        self.client: ClientConnection = connection.stream_client(self)
        self.reader = ResponseReader()
        self.reader.expect(method)
        self.trailers: Headers | None = None  # the request's, until the stream ends
        # Our answer: DATA waiting for the client's window, then the end (trailers or b"").
        self.pending: deque[bytes] = deque()
        self.pending_size = 0
        self.ending: Headers | None = None
        self.answered = False  # the final HEADERS went out
        self.ended = False  # END_STREAM went out: the answer is complete
        self.request_ended = False
        self.paused_reading = False
        self.unacked = 0  # the client's bytes not yet let back into its window
        self.paused_writing = False
        self.closing = False  # the ClientConnection is done; the answer may still be going
        self.gone = False  # reset or finished: the ClientConnection has been told

    # From the client (the connection dispatches its events here)

    def start(self, head: bytes) -> None:
        self.client.data_received(head)

    def received(self, data: bytes, flow_length: int) -> None:
        if self.gone:
            self.connection.acknowledge(flow_length, self.stream_id)
            return
        if data:
            self.client.data_received(encode_chunk(data) if self.chunked else data)
        if self.paused_reading:
            self.unacked += flow_length  # the window opens when the backend takes the bytes
        else:
            self.connection.acknowledge(flow_length, self.stream_id)

    def request_end(self) -> None:
        self.request_ended = True
        if self.chunked and not self.gone:
            self.client.data_received(encode_last_chunk(self.trailers))

    def reset_by_client(self) -> None:
        """RST_STREAM from the client: the exchange is cancelled (its backend connection
        closes with it)."""
        self.ended = True
        self._gone()

    def connection_lost(self, exc: Exception | None) -> None:
        self.ended = True
        self._gone()

    # asyncio.Transport, as the ClientConnection uses it

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return None  # not this stream's to tune or reset
        if name == "h2_stream":
            return self.stream_id
        return self.connection.transport.get_extra_info(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.gone or self.ended:
            return
        try:
            events = self.reader.feed(bytes(data))
        except UpstreamProtocolError:
            self._reset(ErrorCodes.INTERNAL_ERROR)
            return
        self._answer(events)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a stream's end is its answer's end")

    def get_write_buffer_size(self) -> int:
        return self.pending_size

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (LOW_WATER, HIGH_WATER)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the stream's marks are fixed: they size the memory a client can hold

    def pause_reading(self) -> None:
        self.paused_reading = True

    def resume_reading(self) -> None:
        self.paused_reading = False
        if self.unacked:
            unacked, self.unacked = self.unacked, 0
            self.connection.acknowledge(unacked, self.stream_id)

    def is_reading(self) -> bool:
        return not self.paused_reading

    def is_closing(self) -> bool:
        return self.closing or self.gone

    def close(self) -> None:
        """The ClientConnection is done: the answer ends (a body that runs to the close ends
        here), is still going out (then it finishes, or the send timer resets it), or was cut
        short (RST_STREAM)."""
        if self.closing or self.gone:
            return
        self.closing = True
        if not self.ended and self.ending is None and self.reader.close_delimited:
            with contextlib.suppress(UpstreamProtocolError):  # then reset, below
                self._answer(self.reader.eof())
        if self.ending is None and not self.ended:
            self._reset(ErrorCodes.INTERNAL_ERROR)  # the answer was cut short
        elif self.ended:
            self._finished()

    def abort(self) -> None:
        if not self.gone:
            self._reset(ErrorCodes.INTERNAL_ERROR if not self.ended else ErrorCodes.NO_ERROR)

    # Our answer

    def _answer(self, events: list[Event]) -> None:
        h2 = self.h2
        sid = self.stream_id
        for event in events:
            kind = type(event)
            if kind is Data:
                assert isinstance(event, Data)
                if event.data:
                    self.pending.append(event.data)
                    self.pending_size += len(event.data)
            elif kind is Response:
                assert isinstance(event, Response)
                if event.status == 101:
                    self._reset(ErrorCodes.INTERNAL_ERROR)  # no upgrades on a stream
                    return
                h2.send_headers(sid, response_fields(event.status, event.headers))
                if not event.interim:
                    self.answered = True
            elif kind is EndOfMessage:
                assert isinstance(event, EndOfMessage)
                self.ending = trailers_out(event.trailers) if event.trailers else []
        self.push()

    def push(self) -> None:
        """Send what the client's window allows; then the end, once all DATA went."""
        if self.gone or self.ended:
            return
        h2 = self.h2
        sid = self.stream_id
        pending = self.pending
        try:
            while pending:
                window = min(h2.local_flow_control_window(sid), h2.max_outbound_frame_size)
                if window <= 0:
                    break
                chunk = pending[0]
                if len(chunk) > window:
                    pending[0] = chunk[window:]
                    chunk = chunk[:window]
                else:
                    pending.popleft()
                self.pending_size -= len(chunk)
                h2.send_data(sid, chunk)
            if not pending and self.ending is not None:
                if self.ending:
                    h2.send_headers(sid, self.ending, end_stream=True)
                else:
                    h2.end_stream(sid)
                self.ended = True
        except H2Error:  # the stream closed under us (the client reset it as we wrote)
            self.ended = True
            self._gone()
            return
        self.connection.flush()
        self._flow()
        if self.ended:
            self._finished()

    def _flow(self) -> None:
        """Pause the exchange past the high-water mark (or while the socket is full), resume
        under the low one."""
        full = self.pending_size > HIGH_WATER or self.connection.write_paused
        if full and not self.paused_writing:
            self.paused_writing = True
            self.client.pause_writing()
        elif self.paused_writing and not full and self.pending_size <= LOW_WATER:
            self.paused_writing = False
            self.client.resume_writing()

    def socket_flow(self) -> None:
        """The connection's socket paused or resumed writing."""
        if not self.gone:
            self._flow()

    # Endings

    def _finished(self) -> None:
        """The answer is complete. A request body still coming has nowhere to go: stop it."""
        if not self.request_ended:
            self.connection.reset(self.stream_id, ErrorCodes.NO_ERROR)
        self._gone()

    def _reset(self, code: ErrorCodes) -> None:
        self.connection.reset(self.stream_id, code)
        self.ended = True
        self._gone()

    def _gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        self.pending.clear()
        self.pending_size = 0
        # As a socket's transport does, the loss is told on the next turn: the call that
        # ended the stream may be the exchange's own, which then finishes as answered.
        self.client.loop.call_soon(self._release)

    def _release(self) -> None:
        self.client.connection_lost(None)
        self.connection.stream_done(self)
