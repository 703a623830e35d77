"""A small HTTP/2-over-TLS server on asyncio, built on the sans-IO `h2` library.

Its one job: turn each HTTP/2 stream into a `Request`, await the handler for it and write
the `Response` back, honouring flow control (RFC 9113 §5.2). The client preface is
accepted with ALPN "h2" and without any ALPN (prior knowledge, RFC 9113 §3.3), as APNs
clients such as aioapns use it. A client that speaks HTTP/1.1 instead gets one answer per
connection from a minimal fallback (Content-Length bodies only, then the connection
closes), enough for `requests`-based OAuth2 token fetches and for curl.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack.hpack

_log = logging.getLogger(__name__)

# RFC 9113 §3.4: the client connection preface.
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request: header names lowercased, pseudo-headers left out."""

    method: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes
    http_version: str = "2"
    # Wall-clock time (time.time()) at which the request was complete on the wire.
    received_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class Response:
    """One HTTP response; an empty body is sent as HEADERS with END_STREAM and no DATA."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


Handler = Callable[[Request], Awaitable[Response]]


HuffmanDecode = Callable[[bytes | bytearray | memoryview | None], bytes]


class MemoizedHuffmanDecoder:
    """hpack's Huffman decoding, remembering values of ``min_length`` bytes or more."""

    def __init__(self, original: HuffmanDecode, min_length: int = 64, max_entries: int = 64):
        self.original = original
        self.min_length = min_length
        self.max_entries = max_entries
        self.cache: dict[bytes, bytes] = {}
        self.hits = 0

    def __call__(self, huffman_string: bytes | bytearray | memoryview | None) -> bytes:
        if huffman_string is None or len(huffman_string) < self.min_length:
            return self.original(huffman_string)
        key = bytes(huffman_string)
        decoded = self.cache.get(key)
        if decoded is not None:
            self.hits += 1
            return decoded
        decoded = self.original(key)  # undecodable: raises, nothing kept
        if len(self.cache) >= self.max_entries:
            self.cache.clear()
        self.cache[key] = decoded
        return decoded


def memoize_huffman_decoding() -> MemoizedHuffmanDecoder:
    """Make hpack remember the Huffman decoding of long header values, in this process.

    FCM clients send a ~1 KB OAuth2 access token in every request as a never-indexed
    literal (RFC 7541 §7.1.3), so no HPACK table spares the server from decoding it
    again, and hpack decodes Huffman strings (RFC 7541 §5.2) in pure Python: ~45% of
    the standalone mock's CPU per FCM push, which made the mock, not the client under
    test, the limit of the push benchmark. The same bytes always decode the same way;
    shorter values go through as before. hpack's decoder looks the function up in its
    module for every header, so that name is rebound (once; later calls return it).
    """
    module: Any = hpack.hpack  # decode_huffman is imported there, not re-exported
    current = module.decode_huffman
    if isinstance(current, MemoizedHuffmanDecoder):
        return current
    memoized = MemoizedHuffmanDecoder(current)
    module.decode_huffman = memoized
    return memoized


def server_ssl_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    """A TLS 1.2+ server context offering ALPN "h2" (RFC 9113 §3.2)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["h2"])
    return context


@dataclass(slots=True)
class _Stream:
    method: str
    path: str
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class H2Server:
    """Serves `handler` over HTTP/2 (and a minimal HTTP/1.1 fallback) on one TLS port."""

    def __init__(
        self,
        handler: Handler,
        ssl_context: ssl.SSLContext,
        *,
        max_body: int = 1 << 20,
        max_streams: int = 1000,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.max_body = max_body
        self.max_streams = max_streams
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def port(self) -> int:
        """The bound TCP port (after `start`)."""
        if self._server is None:
            raise RuntimeError("server not started")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, ssl=self.ssl_context
        )

    async def stop(self) -> None:
        """Stop accepting, close every connection and cancel the requests in flight."""
        if self._server is None:
            return
        self._server.close()
        tasks = [task for conn in self._connections for task in conn.tasks()]
        for conn in list(self._connections):
            conn.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None


class _Connection(asyncio.Protocol):
    """One client connection: detects HTTP/2 vs HTTP/1.1, then speaks it."""

    def __init__(self, server: H2Server) -> None:
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._h2: h2.connection.H2Connection | None = None
        self._h1 = False
        self._buffer = b""
        self._streams: dict[int, _Stream] = {}
        self._outgoing: dict[int, memoryview] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._goaway_received = False

    def tasks(self) -> list[asyncio.Task[None]]:
        """Requests being handled on this connection."""
        return list(self._tasks.values())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but speaks its API.
        self._transport = cast(asyncio.Transport, transport)
        self._server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        for task in self._tasks.values():
            task.cancel()
        self._transport = None

    def close(self) -> None:
        """Say GOAWAY (RFC 9113 §6.8) when speaking HTTP/2, then close."""
        if self._transport is None:
            return
        if self._h2 is not None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self._h2.close_connection()
            self._flush()
        self._transport.close()

    def data_received(self, data: bytes) -> None:
        if self._h2 is not None:
            self._h2_received(data)
        elif self._h1:
            self._h1_received(data)
        else:
            self._detect(data)

    def _detect(self, data: bytes) -> None:
        self._buffer += data
        seen = min(len(self._buffer), len(_PREFACE))
        if self._buffer[:seen] != _PREFACE[:seen]:
            self._h1 = True
            self._h1_received(b"")
        elif seen == len(_PREFACE):
            # Inbound headers are validated (a mock should catch a sloppy client); the
            # server's own headers are known-good, so skip that cost per answer.
            config = h2.config.H2Configuration(
                client_side=False,
                header_encoding=None,
                validate_outbound_headers=False,
                normalize_outbound_headers=False,
            )
            self._h2 = h2.connection.H2Connection(config=config)
            self._h2.local_settings = h2.settings.Settings(
                client=False,
                initial_values={
                    h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self._server.max_streams,
                    h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: _MAX_HEAD,
                },
            )
            self._h2.initiate_connection()
            data, self._buffer = self._buffer, b""
            self._h2_received(data)

    # HTTP/2

    def _h2_received(self, data: bytes) -> None:
        assert self._h2 is not None
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError:
            self._flush()
            if self._transport is not None:
                self._transport.close()
            return
        for event in events:
            self._h2_event(event)
        self._flush()

    def _h2_event(self, event: h2.events.Event) -> None:
        assert self._h2 is not None
        if isinstance(event, h2.events.RequestReceived):
            self._stream_opened(event.stream_id, event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data
                if len(stream.body) > self._server.max_body:
                    del self._streams[event.stream_id]
                    self._send(event.stream_id, Response(413, body=b"request body too large"))
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                self._dispatch(event.stream_id, stream)
        elif isinstance(event, h2.events.StreamReset):
            self._streams.pop(event.stream_id, None)
            self._outgoing.pop(event.stream_id, None)
            task = self._tasks.pop(event.stream_id, None)
            if task is not None:
                task.cancel()
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._send_outgoing()
            self._close_if_done()
        elif isinstance(event, h2.events.ConnectionTerminated):
            # RFC 9113 §6.8: streams already open still get their answers.
            self._goaway_received = True
            self._close_if_done()

    def _stream_opened(self, stream_id: int, raw: list[tuple[bytes, bytes]] | None) -> None:
        headers: dict[str, str] = {}
        for raw_name, raw_value in raw or ():
            name = raw_name.decode("latin-1")
            value = raw_value.decode("utf-8", "replace")
            if name in headers:
                headers[name] += ", " + value
            else:
                headers[name] = value
        method = headers.pop(":method", "")
        path = headers.pop(":path", "")
        for pseudo in [name for name in headers if name.startswith(":")]:
            del headers[pseudo]
        self._streams[stream_id] = _Stream(method, path, headers)

    def _dispatch(self, stream_id: int, stream: _Stream) -> None:
        path, _, query = stream.path.partition("?")
        request = Request(
            stream.method, path, query, stream.headers, bytes(stream.body), received_at=time.time()
        )
        task = asyncio.get_running_loop().create_task(self._respond(stream_id, request))
        self._tasks[stream_id] = task

    async def _respond(self, stream_id: int, request: Request) -> None:
        try:
            response = await self._call_handler(request)
        finally:
            self._tasks.pop(stream_id, None)
        self._send(stream_id, response)
        self._schedule_flush()
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self._goaway_received and not self._tasks and not self._outgoing:
            self._flush()
            if self._transport is not None:
                self._transport.close()

    async def _call_handler(self, request: Request) -> Response:
        try:
            return await self._server.handler(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            _log.exception("handler failed for %s %s", request.method, request.path)
            return Response(500, body=b"internal error in the handler")

    def _send(self, stream_id: int, response: Response) -> None:
        if self._h2 is None or self._transport is None:
            return
        headers = [(":status", str(response.status)), *response.headers]
        if response.body:
            headers.append(("content-length", str(len(response.body))))
        try:
            self._h2.send_headers(stream_id, headers, end_stream=not response.body)
        except h2.exceptions.ProtocolError:
            return  # the client reset or closed the stream meanwhile
        if response.body:
            self._outgoing[stream_id] = memoryview(response.body)
            self._send_outgoing()

    def _send_outgoing(self) -> None:
        """Send queued response bodies as far as the flow-control windows allow."""
        assert self._h2 is not None
        for stream_id, data in list(self._outgoing.items()):
            try:
                window = self._h2.local_flow_control_window(stream_id)
                while window > 0 and data:
                    size = min(window, len(data), self._h2.max_outbound_frame_size)
                    chunk, data = data[:size], data[size:]
                    self._h2.send_data(stream_id, chunk.tobytes(), end_stream=not data)
                    window -= size
            except h2.exceptions.ProtocolError:
                data = memoryview(b"")
            if data:
                self._outgoing[stream_id] = data
            else:
                del self._outgoing[stream_id]

    def _schedule_flush(self) -> None:
        # Coalesce the answers finished in one loop iteration into one write.
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if self._h2 is not None and self._transport is not None:
            data = self._h2.data_to_send()
            if data:
                self._transport.write(data)

    # HTTP/1.1 fallback (RFC 9112), one request per connection

    def _h1_received(self, data: bytes) -> None:
        self._buffer += data
        if self._tasks or self._transport is None:
            return
        head_end = self._buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._buffer) > _MAX_HEAD:
                self._h1_write(Response(431, body=b"request header too large\n"))
            return
        try:
            request_line, *lines = self._buffer[:head_end].decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ")
            headers = {}
            for line in lines:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if length < 0:
                raise ValueError(length)
        except ValueError:
            self._h1_write(Response(400, body=b"malformed HTTP/1.1 request\n"))
            return
        if "transfer-encoding" in headers:
            self._h1_write(Response(411, body=b"send a Content-Length body (or use HTTP/2)\n"))
            return
        body = self._buffer[head_end + 4 : head_end + 4 + length]
        if len(body) < length:
            return
        path, _, query = target.partition("?")
        version = version.removeprefix("HTTP/")
        request = Request(method, path, query, headers, body, http_version=version)
        self._tasks[0] = asyncio.get_running_loop().create_task(self._h1_respond(request))

    async def _h1_respond(self, request: Request) -> None:
        self._h1_write(await self._call_handler(request))

    def _h1_write(self, response: Response) -> None:
        if self._transport is None:
            return
        try:
            phrase = http.HTTPStatus(response.status).phrase
        except ValueError:
            phrase = "Unknown"
        lines = [f"HTTP/1.1 {response.status} {phrase}"]
        lines += [f"{name}: {value}" for name, value in response.headers]
        lines += [f"content-length: {len(response.body)}", "connection: close", "", ""]
        self._transport.write("\r\n".join(lines).encode("latin-1") + response.body)
        self._transport.close()
