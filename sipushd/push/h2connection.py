"""One HTTP/2 client connection driven with ``h2`` on an event-loop protocol (FCM's transport).

``Connection`` (an ``asyncio.Protocol``) carries every request to one origin as a
stream; ``h2transport.H2Transport`` keeps one per origin and opens a new one when
it ends. A request's HEADERS and DATA are produced in one go; what ``h2`` has to
send is written after ``CORK_ITERATIONS`` loop iterations, so the frames of the
pushes made meanwhile share TLS records and system calls (see ``netbackend``).
Answers are read whole (FCM's are small JSON) and returned as an ``H2Answer``.

Rules (RFC 9113):
- §5.1.2: no more streams than the server's SETTINGS_MAX_CONCURRENT_STREAMS;
  requests over it wait for a stream to end (the ``pool`` timeout).
- §5.2: request bodies are sent as far as the flow-control windows allow, then
  wait for WINDOW_UPDATE (the ``write`` timeout); received DATA is acknowledged.
- §6.8: after GOAWAY no new stream goes on this connection. Streams above its
  last stream id were not processed and raise ``Unprocessed`` (the transport sends
  them again on a new connection); ``h2`` accepts no frame after GOAWAY, so streams
  at or below it fail with ``httpx.RemoteProtocolError``.
- §8.7: a stream reset with REFUSED_STREAM was not processed: ``Unprocessed``.
  Any other RST_STREAM fails the request with ``httpx.RemoteProtocolError``.
- A lost connection fails its requests with ``httpx.ReadError``. Stream ids running
  out (§5.1.1) retire the connection: ``Unprocessed``, and it closes once idle.
- A request given up (cancelled, or the ``read`` timeout) resets its stream (CANCEL).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Mapping
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import httpx
from hpack import NeverIndexedHeaderTuple

from sipushd.push import hpack_cache
from sipushd.push.netbackend import CORK_BYTES, CORK_ITERATIONS

MAX_BODY = 1 << 20  # an answer larger than this is refused (FCM's are a few hundred bytes)
MAX_STREAMS = 1000  # our own cap when the server announces none
CONNECTION_WINDOW = 1 << 24  # receive window for the whole connection, as httpcore sets it
# RFC 9113 §8.2.2: connection-specific fields are not sent over HTTP/2; host becomes :authority.
_SKIPPED = frozenset(
    {b"host", b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"}
)
_SENSITIVE = frozenset({b"authorization", b"proxy-authorization"})  # as h2's secure_headers


class Unprocessed(Exception):
    """The server did not process the request (GOAWAY above it, REFUSED_STREAM): send again."""


class _ReadTimedOut(Exception):
    """No frame of the answer within the ``read`` timeout."""


class H2Answer:
    """A whole answer: status, header fields (lowercase names, no pseudo-headers), body."""

    __slots__ = ("body", "headers", "status", "stream_id")

    def __init__(
        self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, stream_id: int
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stream_id = stream_id

    def header(self, name: bytes) -> str | None:
        """The value of field ``name`` (lowercase), several joined with ", " as httpx does."""
        values = [value.decode("latin-1") for key, value in self.headers if key == name]
        return ", ".join(values) if values else None


class _Stream:
    """One request in flight: the answer as it arrives, and the future its sender waits on.

    The ``read`` timeout restarts on every frame received. A frame only moves
    ``read_by``; the one timer checks it when it fires and waits again if a frame
    came meanwhile (re-arming a timer per frame cost more than the frame's own work).
    """

    __slots__ = ("body", "done", "headers", "read_by", "read_timeout", "status", "timer")

    def __init__(self, done: asyncio.Future[None], read_timeout: float | None) -> None:
        self.done = done
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.read_timeout = read_timeout
        self.read_by = 0.0  # loop time by which the next frame is due (with a timer)
        self.timer: asyncio.TimerHandle | None = None


class _H2Connection(h2.connection.H2Connection):
    """``h2``'s connection, counting the open streams without walking them all.

    ``h2`` counts open outbound streams by walking every stream on each new one
    (and drops closed ones from ``streams`` as it goes): at a hundred streams in
    flight that was ~3% of a push. Here ``forget`` drops a stream that is no
    longer open as soon as its request is over, so every stream left in
    ``streams`` is one in flight or still open, and their number is the count
    (an upper bound while an ended stream's request has not yet resumed).
    The transport keeps under the server's limit itself (``_wait_for_slot``);
    this count only backs ``h2``'s own check in ``send_headers``.
    """

    @property
    def open_outbound_streams(self) -> int:
        return len(self.streams)

    def forget(self, stream_id: int) -> None:
        """Drop ``stream_id`` if it is closed (or was never opened), as ``h2``'s count would."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.open:
            del self.streams[stream_id]
            if stream.closed:  # h2 answers frames on it as on a closed stream (RFC 9113 §5.1)
                self._closed_streams[stream_id] = stream.closed_by


class Connection(asyncio.Protocol):
    """One HTTP/2 connection: ``h2`` state, the streams in flight, corked writes."""

    def __init__(self, authority: bytes) -> None:
        config = h2.config.H2Configuration(
            client_side=True,
            header_encoding=None,
            # Our request headers are built below (lowercase, no connection fields,
            # authorization never indexed); the answers are still validated.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
        )
        self.h2 = _H2Connection(config=config)
        self.huffman = hpack_cache.install(self.h2.encoder)
        self.authority = authority
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.streams: dict[int, _Stream] = {}
        self.usable = True  # new streams may be opened (no GOAWAY, not lost, ids left)
        self.error: httpx.TransportError | None = None  # why the connection ended
        self.sends = 0  # transport writes so far
        # Set at the server's first SETTINGS (RFC 9113 §3.4): its stream limit is known.
        self.settings_received: asyncio.Future[None] = self.loop.create_future()
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._window_waiters: list[asyncio.Future[None]] = []
        self._writable: asyncio.Future[None] | None = None
        self._cork: asyncio.Handle | None = None
        self._cork_left = 0
        self._corked_bytes = 0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but speak its API.
        self.transport = cast(asyncio.Transport, transport)
        self.h2.local_settings = h2.settings.Settings(
            client=True,
            initial_values={
                h2.settings.SettingCodes.ENABLE_PUSH: 0,
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 65536,
            },
        )
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(CONNECTION_WINDOW)
        self.flush()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self._end(httpx.RemoteProtocolError(f"HTTP/2 protocol error: {exc}"))
            return
        for event in events:
            self._event(event)
        self._schedule_flush(0)

    def eof_received(self) -> bool:
        self._end(httpx.ReadError("connection closed by the server"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        reason = f": {type(exc).__name__}: {exc}" if exc is not None else ""
        self._end(httpx.ReadError(f"connection lost{reason}"), close=False)
        self.transport = None

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        _wake(self._writable)
        self._writable = None

    # events from the server

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if stream is not None and event.data:
                stream.body += event.data
                self._reschedule(stream)
                if len(stream.body) > MAX_BODY:
                    self._fail(event.stream_id, httpx.RemoteProtocolError("answer too large"))
                    self.reset(event.stream_id)
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                self._response_head(stream, event.headers or [])
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                _wake(stream.done)
        elif isinstance(event, h2.events.StreamReset):
            self._stream_reset(event)
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            _wake(self.settings_received)
            self._wake_window_waiters()
            self._wake_slot_waiters()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)

    def _response_head(self, stream: _Stream, headers: list[tuple[bytes, bytes]]) -> None:
        for name, value in headers:
            if name == b":status":
                stream.status = int(value)
            elif not name.startswith(b":"):
                stream.headers.append((name, value))
        self._reschedule(stream)

    def _stream_reset(self, event: h2.events.StreamReset) -> None:
        code = event.error_code
        if code == h2.errors.ErrorCodes.REFUSED_STREAM:
            self._fail(event.stream_id, Unprocessed())
        else:
            self._fail(event.stream_id, httpx.RemoteProtocolError(f"stream reset: {code!r}"))

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        last = event.last_stream_id or 0
        error = httpx.RemoteProtocolError(f"GOAWAY {event.error_code!r}, last stream {last}")
        for stream_id in list(self.streams):
            self._fail(stream_id, Unprocessed() if stream_id > last else error)
        self._end(error)

    def _reschedule(self, stream: _Stream) -> None:
        if stream.timer is not None:
            stream.read_by = self.loop.time() + cast(float, stream.read_timeout)

    def _read_timer(self, stream: _Stream) -> None:
        """The ``read`` timeout fired: fail the stream unless a frame came meanwhile."""
        stream.timer = None
        if stream.done.done():
            return
        if stream.read_by > self.loop.time():
            stream.timer = self.loop.call_at(stream.read_by, self._read_timer, stream)
        else:
            stream.done.set_exception(_ReadTimedOut())

    def _fail(self, stream_id: int, exc: BaseException) -> None:
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.done.done():
            stream.done.set_exception(exc)

    def _end(self, error: httpx.TransportError, *, close: bool = True) -> None:
        """No more streams here: fail those in flight, wake every waiter, close."""
        self.usable = False
        if self.error is None:
            self.error = error
        for stream_id in list(self.streams):
            self._fail(stream_id, error)
        if not self.settings_received.done():
            self.settings_received.set_exception(error)
            self.settings_received.exception()  # retrieved: no one may be waiting
        self._wake_slot_waiters()
        self._wake_window_waiters()
        _wake(self._writable)
        if close and self.transport is not None:
            self.flush()
            self.transport.abort()

    # sending

    async def request(self, request: httpx.Request, timeouts: dict[str, Any]) -> httpx.Response:
        """Send ``request`` on a new stream and wait for the whole answer."""
        if isinstance(request.stream, httpx.ByteStream):
            body = request.content
        else:
            body = await request.aread()
        answer = await self.exchange(self._headers(request), body, timeouts)
        extensions = {"http_version": b"HTTP/2", "stream_id": answer.stream_id}
        return httpx.Response(
            answer.status,
            headers=answer.headers,
            stream=httpx.ByteStream(answer.body),
            extensions=extensions,
        )

    async def exchange(
        self, headers: list[tuple[bytes, bytes]], body: bytes, timeouts: Mapping[str, Any]
    ) -> H2Answer:
        """Send ``headers`` (pseudo-headers first) and ``body`` on a new stream; the answer."""
        if self._writable is not None:
            await self._wait_writable(timeouts.get("write"))
        await self._wait_for_slot(timeouts.get("pool"))
        # No await from the slot check to the stream's registration: the count holds.
        try:
            stream_id = self.h2.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            self.usable = False  # RFC 9113 §5.1.1: ids exhausted, a new connection is needed
            raise Unprocessed() from None
        read_timeout: float | None = timeouts.get("read")
        stream = _Stream(self.loop.create_future(), read_timeout)
        self.streams[stream_id] = stream
        try:
            self.h2.send_headers(stream_id, headers, end_stream=not body)
            if body:
                await self._send_body(stream_id, stream, body, timeouts.get("write"))
            self._schedule_flush(len(body))
            if read_timeout is not None and not stream.done.done():
                stream.read_by = self.loop.time() + read_timeout
                stream.timer = self.loop.call_at(stream.read_by, self._read_timer, stream)
            await stream.done
        except _ReadTimedOut:
            self.reset(stream_id)
            raise httpx.ReadTimeout(f"no answer within {read_timeout} s") from None
        except h2.exceptions.ProtocolError as exc:
            raise httpx.LocalProtocolError(f"HTTP/2: {exc}") from exc
        except BaseException:
            if not stream.done.done() or stream.done.cancelled():
                self.reset(stream_id)  # given up by the caller
            raise
        finally:
            if stream.timer is not None:
                stream.timer.cancel()
            del self.streams[stream_id]
            self.h2.forget(stream_id)
            self._stream_ended()
        return H2Answer(stream.status, stream.headers, bytes(stream.body), stream_id)

    def pseudo_headers(self, method: bytes, path: bytes) -> list[tuple[bytes, bytes]]:
        """The request pseudo-header fields (RFC 9113 §8.3.1) on this connection."""
        return [
            (b":method", method),
            (b":authority", self.authority),
            (b":scheme", b"https"),
            (b":path", path),
        ]

    def _headers(self, request: httpx.Request) -> list[tuple[bytes, bytes]]:
        headers = self.pseudo_headers(request.method.encode(), request.url.raw_path)
        for raw_name, value in request.headers.raw:
            name = raw_name.lower()
            if name in _SKIPPED:
                continue
            if name in _SENSITIVE:
                headers.append(NeverIndexedHeaderTuple(name, value))
            else:
                headers.append((name, value))
        return headers

    async def _send_body(
        self, stream_id: int, stream: _Stream, body: bytes, timeout: float | None
    ) -> None:
        """DATA frames as far as the windows allow (RFC 9113 §5.2), END_STREAM on the last."""
        view = memoryview(body)
        while view:
            if stream.done.done():  # answered (or failed) before the whole body went out
                self.reset(stream_id)
                stream.done.result()
                return
            window = min(self.h2.local_flow_control_window(stream_id), len(view))
            if window <= 0:
                self.flush()
                await self._wait_window(stream, timeout)
                continue
            size = min(window, self.h2.max_outbound_frame_size)
            chunk, view = view[:size], view[size:]
            self.h2.send_data(stream_id, chunk.tobytes(), end_stream=not view)
            if view:
                self._schedule_flush(size)

    async def _wait_window(self, stream: _Stream, timeout: float | None) -> None:
        waiter = self.loop.create_future()
        self._window_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                await asyncio.wait([waiter, stream.done], return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError:
            raise httpx.WriteTimeout(f"no flow-control window within {timeout} s") from None
        finally:
            waiter.cancel()
        if self.error is not None and not stream.done.done():
            raise self.error

    async def _wait_for_slot(self, timeout: float | None) -> None:
        """Until a stream may be opened under the server's limit (RFC 9113 §5.1.2)."""
        while True:
            if not self.usable:
                raise Unprocessed()
            limit = min(self.h2.remote_settings.max_concurrent_streams, MAX_STREAMS)
            if len(self.streams) < limit:
                if self._slot_waiters and len(self.streams) + 1 < limit:
                    self._wake_slot_waiters()  # the limit grew: let the next one check too
                return
            waiter = self.loop.create_future()
            self._slot_waiters.append(waiter)
            try:
                async with asyncio.timeout(timeout):
                    await waiter
            except TimeoutError:
                raise httpx.PoolTimeout(f"no HTTP/2 stream free within {timeout} s") from None
            finally:
                waiter.cancel()

    async def _wait_writable(self, timeout: float | None) -> None:
        writable = self._writable
        if writable is None:
            return
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(writable)
        except TimeoutError:
            raise httpx.WriteTimeout(f"server not reading for {timeout} s") from None
        if self.error is not None:
            raise Unprocessed()

    def _stream_ended(self) -> None:
        if not self.usable and not self.streams:
            self.close()  # retired (stream ids used up), now idle
        else:
            self._wake_slot_waiters()

    def _wake_slot_waiters(self) -> None:
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if self.usable:
                    return  # one stream ended: one waiter; all of them when the connection ended

    def _wake_window_waiters(self) -> None:
        waiters, self._window_waiters = self._window_waiters, []
        for waiter in waiters:
            _wake(waiter)

    def reset(self, stream_id: int) -> None:
        """RST_STREAM CANCEL for a request given up (RFC 9113 §8.7)."""
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self._schedule_flush(0)

    # corked writes

    def _schedule_flush(self, size: int) -> None:
        self._corked_bytes += size
        if self._corked_bytes >= CORK_BYTES:
            self.flush()
        elif self._cork is None:
            self._cork_left = CORK_ITERATIONS
            self._cork = self.loop.call_soon(self._uncork)

    def _uncork(self) -> None:
        """Count down loop iterations (one call_soon each), then send."""
        self._cork_left -= 1
        if self._cork_left > 0:
            self._cork = self.loop.call_soon(self._uncork)
        else:
            self._cork = None
            self.flush()

    def flush(self) -> None:
        """Write what ``h2`` has to send now."""
        if self._cork is not None:
            self._cork.cancel()
            self._cork = None
        self._corked_bytes = 0
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.transport.is_closing():
            self.sends += 1
            self.transport.write(data)

    def close(self) -> None:
        """GOAWAY, then close the socket at once (as ``netbackend`` does)."""
        if self.transport is None:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.h2.close_connection()
        self._end(httpx.ReadError("connection closed by the client"))


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
