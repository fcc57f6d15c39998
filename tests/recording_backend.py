"""A raw backend that keeps every byte it receives, for tests that assert what usher forwarded.

It answers each complete request (as llhttp reads it) with `200 ok`, so a request usher framed
wrongly gets no answer, and a smuggled second request gets a second one.
"""

from __future__ import annotations

import asyncio

import httptools

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Counter:
    """httptools callbacks: counts complete requests."""

    def __init__(self) -> None:
        self.complete = 0

    def on_message_complete(self) -> None:
        self.complete += 1


class RecordingBackend:
    def __init__(self) -> None:
        # What arrived, in arrival order, on whatever connection (usher reuses them).
        self.log: list[bytes] = []
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def clear(self) -> None:
        self.log.clear()
        self.requests = 0

    @property
    def received(self) -> bytes:
        """Everything received since the start (or `clear`), in arrival order."""
        return b"".join(self.log)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        counter = _Counter()
        parser = httptools.HttpRequestParser(counter)
        try:
            while data := await reader.read(65536):
                self.log.append(data)
                try:
                    parser.feed_data(data)
                except httptools.HttpParserError:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    break
                while counter.complete:
                    counter.complete -= 1
                    self.requests += 1
                    writer.write(OK)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


def forwarded(
    request_line: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    host: bytes = b"x",
    chunked: bool = False,
    body: bytes = b"",
) -> bytes:
    """The exact bytes usher sends a backend for a plain-http request from 127.0.0.1: the
    client's headers (as usher leaves them), then usher's own, then the body."""
    added = [
        (b"X-Forwarded-For", b"127.0.0.1"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Forwarded-Host", host),
        (b"X-Real-IP", b"127.0.0.1"),
        (b"Via", b"1.1 usher"),
    ]
    if chunked:
        added.append((b"Transfer-Encoding", b"chunked"))
    lines = b"".join(n + b": " + v + b"\r\n" for n, v in [*headers, *added])
    return request_line + b" HTTP/1.1\r\n" + lines + b"\r\n" + body
