"""One TCP or TLS connection (a flow, RFC 5626 §3.2): framing, keep-alive, limits.

Incoming bytes go through a StreamParser (RFC 3261 §18.3 framing by Content-Length); each
message is handed up with this flow's Endpoint. A double-CRLF ping is answered with a
single-CRLF pong (RFC 5626 §4.4.1). A parse error is answered with a 4xx when the request
head allows it, then the connection is closed (RFC 3261 §18.3). Idle flows, flows whose
output backs up beyond `max_buffer`, and connections beyond `max_connections` are closed.
"""

from __future__ import annotations

import asyncio
import enum
from typing import cast

from sipushd.sip import Endpoint, Request, SipParseError, StreamParser
from sipushd.transport.context import FlowKey, TransportContext
from sipushd.transport.limits import TransportError
from sipushd.transport.routing import normalize_host, stamp_via
from sipushd.transport.wire import error_response

PONG = b"\r\n"


class FlowState(enum.Enum):
    """Lifecycle of a flow; only CONNECTING and OPEN accept output."""

    CONNECTING = "connecting"
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"
    REJECTED = "rejected"


class StreamFlow(asyncio.Protocol):
    """asyncio protocol for one stream connection, incoming or outgoing."""

    def __init__(
        self, ctx: TransportContext, transport_name: str, endpoint: Endpoint | None = None
    ) -> None:
        self._ctx = ctx
        self._loop = asyncio.get_running_loop()
        self.transport_name = transport_name
        # Outgoing flows know their Endpoint (and id) before the connection exists.
        self.endpoint = endpoint if endpoint is not None else Endpoint(transport_name, "", 0)
        self.flow_id = endpoint.flow if endpoint is not None and endpoint.flow else 0
        self.state = FlowState.CONNECTING
        self._key: FlowKey = (transport_name, "", 0)
        self._transport: asyncio.Transport | None = None
        self._parser = StreamParser(max_message_size=ctx.limits.max_message_size)
        self._pings = 0
        self._pending: list[bytes] = []
        self._pending_size = 0
        self._last_activity = self._loop.time()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        if endpoint is not None:
            self._key = (transport_name, normalize_host(endpoint.host), endpoint.port)
            ctx.register(self, self._key)

    @property
    def writable(self) -> bool:
        """True while output is accepted (connecting or open)."""
        return self.state is FlowState.CONNECTING or self.state is FlowState.OPEN

    # -- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept (or refuse, beyond max_connections) and start the idle timer."""
        stream = self._transport = cast(asyncio.Transport, transport)
        ctx = self._ctx
        if self.flow_id == 0:
            if ctx.at_capacity():
                ctx.counters.rejected_connections += 1
                self.state = FlowState.REJECTED
                stream.abort()
                return
            peer = transport.get_extra_info("peername")
            self.flow_id = ctx.next_flow_id()
            self.endpoint = Endpoint(self.transport_name, peer[0], peer[1], self.flow_id)
            self._key = (self.transport_name, normalize_host(peer[0]), peer[1])
            ctx.register(self, self._key)
        elif self.state is not FlowState.CONNECTING:
            # Given up (timeout or shutdown) while the connection was being made.
            stream.abort()
            return
        self.state = FlowState.OPEN
        self._touch()
        self._idle_timer = self._loop.call_later(ctx.limits.idle_timeout, self._check_idle)
        if self._pending:
            pending, self._pending, self._pending_size = self._pending, [], 0
            self.write(b"".join(pending))

    def data_received(self, data: bytes) -> None:
        """Frame, answer pings, stamp Via and hand each message up."""
        if self.state is not FlowState.OPEN:
            return
        self._ctx.counters.bytes_in += len(data)
        self._last_activity = self._loop.time()
        parser = self._parser
        try:
            messages = parser.feed(data)
        except SipParseError as exc:
            self._fail(exc, data)
            return
        if parser.keepalives != self._pings:
            pings = parser.keepalives - self._pings
            self._pings = parser.keepalives
            self._ctx.counters.keepalives += pings
            self.write(PONG * pings)
        endpoint = self.endpoint
        for message in messages:
            if isinstance(message, Request):
                try:
                    message = stamp_via(message, endpoint.host, endpoint.port)
                except SipParseError as exc:
                    self._fail(exc, message.to_bytes())
                    return
            self._ctx.dispatch(message, endpoint)
            if self.state is not FlowState.OPEN:
                return

    def eof_received(self) -> bool | None:
        """The peer closed its side: close ours too."""
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Leave the flow table and tell the layer above."""
        if self.state is FlowState.REJECTED:
            return
        self._finish()

    # -- used by the manager ----------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Send bytes now, or queue them while connecting; raise TransportError if closed."""
        if self.state is FlowState.OPEN:
            transport = self._transport
            assert transport is not None
            transport.write(data)
            self._ctx.counters.bytes_out += len(data)
            self._last_activity = self._loop.time()
            if transport.get_write_buffer_size() > self._ctx.limits.max_buffer:
                self._overflow()
        elif self.state is FlowState.CONNECTING:
            self._pending.append(data)
            self._pending_size += len(data)
            if self._pending_size > self._ctx.limits.max_buffer:
                self._overflow()
        else:
            raise TransportError(f"flow {self.flow_id} is closed")

    def close(self) -> None:
        """Close gracefully (flushing output); a connecting flow is abandoned."""
        if self.state is FlowState.OPEN:
            self.state = FlowState.CLOSING
            assert self._transport is not None
            self._transport.close()
        elif self.state is FlowState.CONNECTING:
            self._finish()

    def abort(self) -> None:
        """Drop the connection at once, discarding unsent output."""
        if self._transport is not None and self.state is not FlowState.CLOSED:
            self.state = FlowState.CLOSING
            self._transport.abort()
        elif self.state is FlowState.CONNECTING:
            self._finish()

    def connect_failed(self) -> None:
        """The outgoing connection could not be made (or was given up)."""
        self._ctx.counters.connect_failures += 1
        if self._transport is not None and self.state is not FlowState.CLOSED:
            self._transport.abort()
        self._finish()

    async def wait_closed(self) -> None:
        """Wait until connection_lost (or the failed connect) has run."""
        if self.state is FlowState.CLOSED or self.state is FlowState.REJECTED:
            return
        if self._closed_waiter is None:
            self._closed_waiter = self._loop.create_future()
        await self._closed_waiter

    # -- internals --------------------------------------------------------------------

    def _touch(self) -> None:
        self._last_activity = self._loop.time()

    def _check_idle(self) -> None:
        # Re-armed lazily: traffic only stamps a time, the timer fires once per period.
        if self.state is not FlowState.OPEN:
            return
        remaining = self._last_activity + self._ctx.limits.idle_timeout - self._loop.time()
        if remaining > 0:
            self._idle_timer = self._loop.call_later(remaining, self._check_idle)
            return
        self._ctx.counters.idle_closed += 1
        self.abort()

    def _overflow(self) -> None:
        self._ctx.counters.overflow_closed += 1
        self._pending, self._pending_size = [], 0
        self.abort()

    def _fail(self, exc: SipParseError, data: bytes) -> None:
        # RFC 3261 §18.3: a framing error leaves the stream unusable; answer, then close.
        self._ctx.parse_error(str(exc), self.endpoint)
        status = exc.status_hint if 400 <= exc.status_hint <= 699 else 400
        response = error_response(data, status, str(exc))
        if response is not None:
            self.write(response)
        self.close()

    def _finish(self) -> None:
        if self.state is FlowState.CLOSED:
            return
        self.state = FlowState.CLOSED
        self._pending, self._pending_size = [], 0
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._ctx.unregister(self, self._key)
        if self._closed_waiter is not None and not self._closed_waiter.done():
            self._closed_waiter.set_result(None)
