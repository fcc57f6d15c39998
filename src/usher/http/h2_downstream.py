"""The client's Protocol for an HTTP/2 connection: the sans-IO `h2.connection.H2Connection`
inside, one `H2Stream` (with its own `ClientConnection` and exchange) per request.

It takes over from the `ClientConnection` that accepted the socket: when ALPN chose `h2`, or
on an `http` listener with `http2: true` when the first bytes are the h2c preface. That first
connection stays the socket's record in the listener (connection limits, drain, stop) and is
told when the socket closes. Graceful GOAWAY on drain; connection errors answered with a
GOAWAY naming the error (RFC 9113 §5.4.1); the attack bounds of docs/http2.md.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from h2.config import DummyLogger, H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from usher.errors import MalformedRequest
from usher.http.h2_headers import request_head, trailer_fields
from usher.http.h2_stream import H2Stream
from usher.logs import make_no_op

if TYPE_CHECKING:
    from usher.http.downstream import ClientConnection

PREFACE: Final = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# SETTINGS_MAX_CONCURRENT_STREAMS, as nginx's 128 and Envoy's 100 bound them.
MAX_CONCURRENT_STREAMS: Final = 100
STREAM_WINDOW: Final = 65_535  # the client's bytes in flight per stream (RFC default)
# The connection's window holds every stream's in full, so a stalled one starves no other.
CONNECTION_WINDOW: Final = MAX_CONCURRENT_STREAMS * STREAM_WINDOW
# Rapid reset (CVE-2023-44487): streams the client resets, per connection per interval.
MAX_RESETS: Final = 2 * MAX_CONCURRENT_STREAMS
# PING and SETTINGS each make us queue an ACK: at most this many per interval.
MAX_CONTROL_FRAMES: Final = 1000
FLOOD_INTERVAL: Final = 10.0


# h2's logger: nothing logged, as with its default `DummyLogger`, but `debug` and `trace`
# (called for every frame and stream event) are one C call each instead of a Python one.
_NO_LOG: Final = DummyLogger()
make_no_op(_NO_LOG, "debug", "trace")


def takes_prior_knowledge(data: bytes) -> bool:
    """The first bytes of an http connection begin the h2c preface (`PRI` is no HTTP/1.1
    method a client sends: three bytes tell it from PUT, POST, PATCH and PROPFIND)."""
    return len(data) >= 3 and PREFACE.startswith(data[:24])


def negotiated_h2(transport: asyncio.BaseTransport) -> bool:
    """The TLS handshake chose h2 by ALPN."""
    ssl_object = transport.get_extra_info("ssl_object")
    return ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"


class _Budget:
    """At most `limit` events per `interval` seconds (a fixed window, reset as it ends)."""

    __slots__ = ("count", "interval", "limit", "since")

    def __init__(self, limit: int, interval: float) -> None:
        self.limit = limit
        self.interval = interval
        self.count = 0
        self.since = 0.0

    def spend(self, now: float) -> bool:
        """Count one; False once the window's count is over the limit."""
        if now - self.since >= self.interval:
            self.since = now
            self.count = 0
        self.count += 1
        return self.count <= self.limit


class H2Downstream(asyncio.Protocol):
    """One client's HTTP/2 connection: frames in and out through h2, a stream per request."""

    def __init__(self, origin: ClientConnection) -> None:
        self.origin = origin
        self.listener = origin.listener
        self.loop = origin.loop
        self.transport = origin.transport
        # Inbound fields are validated (RFC 9113 §8.2), outbound ones are ours: h2_headers
        # writes them lower-cased without connection-specific fields, so h2 need not check
        # (nor normalise) every answer's head again. Nor need it join a request's split
        # cookie fields: request_head does (one generator step per field less).
        config = H2Configuration(
            client_side=False,
            header_encoding=None,
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            normalize_inbound_headers=False,
            logger=_NO_LOG,
        )
        self.h2 = H2Connection(config)
        header_list = self.listener.limits.max_header_size
        # In force at once (not after the client's ACK), as a server's first SETTINGS are.
        self.h2.local_settings = Settings(
            client=False,
            initial_values={
                SettingCodes.MAX_CONCURRENT_STREAMS: MAX_CONCURRENT_STREAMS,
                SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                SettingCodes.MAX_HEADER_LIST_SIZE: header_list,
            },
        )
        # HPACK bomb: the decoded header list is bounded as it is decoded, not after.
        self.h2.decoder.max_header_list_size = header_list
        self.streams: dict[int, H2Stream] = {}
        self.write_paused = False
        self.draining = False
        self.closed = False
        self.last_stream_id = 0  # the GOAWAY's, once draining: later streams are refused
        self._resets = _Budget(MAX_RESETS, FLOOD_INTERVAL)
        self._control = _Budget(MAX_CONTROL_FRAMES, FLOOD_INTERVAL)
        self._send_wait = origin.deadline(self._send_timed_out)
        self._idle_wait = origin.deadline(self._idle_timed_out)

    def start(self, data: bytes = b"") -> None:
        """Take the socket over from the origin connection; `data` is what it read already."""
        origin = self.origin
        origin.h2 = self
        origin.disarm_read_timer()
        self.transport.set_protocol(self)
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW - STREAM_WINDOW)
        self.flush()
        self._idle_wait.arm(self.listener.timeouts.header)  # the preface, then requests
        if data:
            self.data_received(data)

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            events = self.h2.receive_data(data)
        except ProtocolError:
            # h2 has queued the GOAWAY with the error's code: send it and close.
            self._fail()
            return
        for event in events:
            if self.closed:
                return
            self._dispatch(event)
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._send_wait.cancel()
        self._idle_wait.cancel()
        for stream in list(self.streams.values()):
            stream.connection_lost(exc)
        self.origin.connection_lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True
        self._send_wait.arm(self.listener.timeouts.send)
        for stream in list(self.streams.values()):
            stream.socket_flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        self._send_wait.cancel()
        for stream in list(self.streams.values()):
            stream.socket_flow()

    # Events from h2

    def _dispatch(self, event: object) -> None:
        kind = type(event)
        if kind is DataReceived:
            assert isinstance(event, DataReceived)
            stream = self.streams.get(event.stream_id or 0)
            if stream is None:
                self.acknowledge(event.flow_controlled_length or 0, event.stream_id or 0)
            else:
                stream.received(event.data or b"", event.flow_controlled_length or 0)
        elif kind is RequestReceived:
            assert isinstance(event, RequestReceived)
            self._request(event)
        elif kind is StreamEnded:
            assert isinstance(event, StreamEnded)
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream.request_end()
        elif kind is TrailersReceived:
            assert isinstance(event, TrailersReceived)
            self._trailers(event)
        elif kind is WindowUpdated:
            assert isinstance(event, WindowUpdated)
            self._window(event.stream_id or 0)
        elif kind is StreamReset:
            assert isinstance(event, StreamReset)
            self._client_reset(event)
        elif kind is RemoteSettingsChanged:
            assert isinstance(event, RemoteSettingsChanged)
            if self._calm():
                self._window(0)  # a new initial window may let held DATA go
        elif kind is PingReceived:
            self._calm()
        elif kind is ConnectionTerminated:
            self.draining = True  # the client's GOAWAY: its open streams still finish
            self._close_if_done()

    def _request(self, event: RequestReceived) -> None:
        sid = event.stream_id or 0
        if self.draining and sid > self.last_stream_id:
            self.reset(sid, ErrorCodes.REFUSED_STREAM)  # after our GOAWAY: retry elsewhere
            return
        headers = [(bytes(name), bytes(value)) for name, value in event.headers or ()]
        try:
            ends = event.stream_ended is not None
            head, method, chunked = request_head(headers, ends_stream=ends)
        except MalformedRequest:
            self.reset(sid, ErrorCodes.PROTOCOL_ERROR)
            return
        self._idle_wait.cancel()
        stream = self.streams[sid] = H2Stream(self, sid, method, chunked)
        stream.start(head)

    def _trailers(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is None:
            return
        try:
            fields = trailer_fields([(bytes(n), bytes(v)) for n, v in event.headers or ()])
        except MalformedRequest:
            stream.reset_by_client()
            self.reset(stream.stream_id, ErrorCodes.PROTOCOL_ERROR)
            return
        stream.trailers = fields

    def _window(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.push()
            return
        for stream in list(self.streams.values()):
            stream.push()

    def _client_reset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id or 0)
        if stream is not None:
            stream.reset_by_client()
        if event.remote_reset and not self._resets.spend(self.listener.clock.now()):
            self.calm_down("too many streams reset")

    def _calm(self) -> bool:
        """Count a control frame that makes us answer; False when the client floods."""
        if self._control.spend(self.listener.clock.now()):
            return True
        self.calm_down("too many PING or SETTINGS frames")
        return False

    # For the streams

    def stream_client(self, stream: H2Stream) -> ClientConnection:
        """The ClientConnection of a new stream: the origin's kind (its class, so that this
        module need not import the downstream, which imports this one), for the same client,
        already admitted by the origin's listener checks."""
        origin = self.origin
        client = type(origin)(self.listener, peer=origin.peer, local=origin.local)
        client.transport = stream
        client.client_ip = origin.client_ip
        client.client_port = origin.client_port
        client.cert_subject = origin.cert_subject
        return client

    def acknowledge(self, size: int, stream_id: int) -> None:
        if size and not self.closed:
            try:
                self.h2.acknowledge_received_data(size, stream_id)
            except H2Error:  # the stream closed meanwhile: the connection's share still counts
                self.h2.increment_flow_control_window(size)
            self.flush()

    def reset(self, stream_id: int, code: ErrorCodes) -> None:
        if self.closed:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except H2Error:
            return  # closed already on both sides
        self.flush()

    def stream_done(self, stream: H2Stream) -> None:
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
        if not self.streams and not self.closed:
            self._idle_wait.arm(self.listener.timeouts.idle)
        self._close_if_done()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    # Endings

    def drain(self) -> None:
        """Graceful GOAWAY (NO_ERROR, the last stream taken): open streams finish, new ones
        are refused, and the connection closes with the last."""
        if self.draining or self.closed:
            self.draining = True
            self._close_if_done()
            return
        self.draining = True
        self.last_stream_id = self.h2.highest_inbound_stream_id
        self.flush()
        # Written by hand: h2's close_connection would stop the streams still answering.
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.last_stream_id, error_code=0)
        self.transport.write(frame.serialize())
        self._close_if_done()

    def calm_down(self, why: str) -> None:
        """A client that abuses the protocol: GOAWAY ENHANCE_YOUR_CALM and close."""
        self.listener.metrics.rejected(self.listener.name, "h2_flood")
        self.h2.close_connection(ErrorCodes.ENHANCE_YOUR_CALM, additional_data=why.encode())
        self._fail()

    def _fail(self) -> None:
        """After a connection error: send what h2 queued (its GOAWAY) and close."""
        self.flush()
        self._close()

    def _close_if_done(self) -> None:
        if self.draining and not self.streams and not self.closed:
            self._close()

    def _close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._send_wait.cancel()
        self._idle_wait.cancel()
        self.transport.close()

    def _idle_timed_out(self) -> None:
        if not self.streams and not self.closed:
            self.h2.close_connection(ErrorCodes.NO_ERROR)
            self._fail()

    def _send_timed_out(self) -> None:
        self.closed = True
        self.transport.abort()  # the client stopped reading; nothing more can be said to it
