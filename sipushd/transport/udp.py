"""One UDP socket: a datagram is one message (RFC 3261 §18.3), parsed and handed up.

The hot path allocates only what parsing needs plus the source Endpoint: no task, no
timer. Non-SIP datagrams (they cannot start with a letter) are keep-alives: CRLF is
ignored, a STUN Binding Request is answered (RFC 5626 §4.4.2, RFC 5389), the rest dropped.
A malformed request gets a stateless 4xx when its head allows one, sent back to the
packet source; anything else malformed is dropped.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any, cast

from sipushd.sip import Endpoint, Request, SipParseError, parse_message
from sipushd.transport.context import TransportContext
from sipushd.transport.routing import stamp_via
from sipushd.transport.wire import error_response, is_keepalive, stun_binding_response

_FIRST_LETTER = 0x41  # "A": every request method and "SIP/2.0" start with a letter
_CR = 0x0D  # RFC 3261 §7.5: CRLFs before the start line are allowed (and ignored)
# Linux getsockopt(SO_MEMINFO): struct sk_meminfo, u32 fields; the first two are the memory
# the datagrams waiting in the receive queue take and the queue's limit (RMEM_ALLOC, RCVBUF).
_SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55)
_MEMINFO_SIZE = 9 * 4


class UdpListener(asyncio.DatagramProtocol):
    """asyncio datagram protocol for one bound UDP socket."""

    def __init__(self, ctx: TransportContext) -> None:
        self._ctx = ctx
        self._transport: asyncio.DatagramTransport | None = None
        self._max_size = ctx.limits.max_message_size
        self._meminfo = sys.platform == "linux"
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport for sending."""
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Parse one datagram, stamp the Via of a request, hand it up."""
        ctx = self._ctx
        ctx.counters.bytes_in += len(data)
        first = data[0] if data else 0
        if first < _FIRST_LETTER and (first != _CR or is_keepalive(data)):
            self._not_sip(data, addr)
            return
        host: str = addr[0]
        port: int = addr[1]
        source = Endpoint("udp", host, port)
        try:
            message = parse_message(data, max_message_size=self._max_size)
            if isinstance(message, Request):
                message = stamp_via(message, host, port)
        except SipParseError as exc:
            self._malformed(data, exc, source)
            return
        ctx.dispatch(message, source)

    def error_received(self, exc: Exception) -> None:
        """ICMP errors (port unreachable, ...) only count: UDP has no connection to fail."""
        self._ctx.counters.send_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        """The socket is closed."""
        if not self.closed.done():
            self.closed.set_result(None)

    def sendto(self, data: bytes, host: str, port: int) -> None:
        """Send one datagram from this socket."""
        transport = self._transport
        if transport is None or transport.is_closing():
            self._ctx.counters.send_errors += 1
            return
        transport.sendto(data, (host, port))
        self._ctx.counters.bytes_out += len(data)

    def receive_queue(self) -> tuple[int, int]:
        """(bytes waiting, bytes the queue may hold) for this socket; (0, 0) when unknown.

        Bytes are kernel memory, the datagrams' own and the kernel's per-packet overhead.
        What the process has yet to read is work it is behind on: under overload it is the
        queue whose delay makes peers retransmit (RFC 3261 §17.1.1.2, timer A).
        """
        transport = self._transport
        if not self._meminfo or transport is None:
            return 0, 0
        try:
            raw = transport.get_extra_info("socket").getsockopt(
                socket.SOL_SOCKET, _SO_MEMINFO, _MEMINFO_SIZE
            )
        except (OSError, AttributeError):
            self._meminfo = False  # not Linux 4.6+, or no socket: never ask again
            return 0, 0
        order = sys.byteorder
        return int.from_bytes(raw[0:4], order), int.from_bytes(raw[4:8], order)

    def close(self) -> None:
        """Close the socket."""
        if self._transport is not None:
            self._transport.close()

    def _not_sip(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if is_keepalive(data):
            self._ctx.counters.keepalives += 1
            return
        answer = stun_binding_response(data, addr[0], addr[1])
        if answer is not None:
            self._ctx.counters.keepalives += 1
            self.sendto(answer, addr[0], addr[1])

    def _malformed(self, data: bytes, exc: SipParseError, source: Endpoint) -> None:
        self._ctx.parse_error(str(exc), source)
        status = exc.status_hint if 400 <= exc.status_hint <= 699 else 400
        response = error_response(data, status, str(exc))
        if response is not None:
            self.sendto(response, source.host, source.port)
