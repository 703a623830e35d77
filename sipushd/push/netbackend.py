"""An httpcore network backend on the event loop's own transports, with corked writes.

httpx's default backend goes through anyio: TLS in Python over a memory BIO,
a cancel scope around every read and write, and a trip through the event
loop on every send. httpcore's HTTP/2 connection writes under a lock whose
every acquisition also yields to the loop, so the frames of concurrent
requests never meet: each push's HEADERS, DATA and END_STREAM went out as its
own TLS record and ``send()`` system call, three or more per push, and on
loopback the sender pays for the receiver's TCP processing too.

This backend runs on the loop's own TLS transports (uvloop's, in Cython, under
the daemon; asyncio's elsewhere) and corks writes: bytes written are sent when
``CORK_ITERATIONS`` loop iterations have passed since the first unsent write,
or at once past ``CORK_BYTES``. The frames of the pushes made meanwhile share
one TLS record and one system call; a lone push waits a few iterations (tens
of microseconds when idle). The cork is short because a wake-up push is what a
ringing call waits for: under load each iteration runs many callbacks, and with
16 iterations the p99 of FCM pushes at ~700/s was 15-30 ms against 4-10 ms with
4, for about the same throughput (4 iterations: 35 sends for 50 concurrent
pushes; 1 iteration: 112, no sharing at all).
``write`` never waits unless the transport asked to pause (flow control); a
read returns everything received so far, up to the size asked for.

The HTTP/2 and HTTP/1.1 protocol work stays in httpcore and h2: this module
moves bytes only. ``AsyncioHTTPTransport`` is httpx's transport with its
connection pool built on this backend.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
import httpx

CORK_ITERATIONS = 4
CORK_BYTES = 64 * 1024
READ_HIGH_WATER = 256 * 1024  # pause reading when this much waits for a reader
DEFAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)  # httpx's


class _StreamProtocol(asyncio.Protocol):
    """Buffers what the peer sends and tracks flow control for one connection."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self.paused = False
        self.reading_paused = False
        self._reader: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but speak its API.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += data
        if len(self.received) > READ_HIGH_WATER and self.transport is not None:
            self.transport.pause_reading()
            self.reading_paused = True
        _wake(self._reader)

    def eof_received(self) -> bool:
        self.eof = True
        _wake(self._reader)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.error = exc
        _wake(self._reader)
        _wake(self._drain)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        _wake(self._drain)

    async def wait_readable(self) -> None:
        """Wait for data or the end; one reader at a time (httpcore reads under a lock)."""
        self._reader = asyncio.get_running_loop().create_future()
        try:
            await self._reader
        finally:
            self._reader = None

    async def wait_writable(self) -> None:
        self._drain = asyncio.get_running_loop().create_future()
        try:
            await self._drain
        finally:
            self._drain = None

    def take(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` of what was received, resuming reading below the mark."""
        if len(self.received) <= max_bytes:
            data = bytes(self.received)
            self.received.clear()
        else:
            data = bytes(self.received[:max_bytes])
            del self.received[:max_bytes]
        if self.reading_paused and len(self.received) <= READ_HIGH_WATER:
            self.reading_paused = False
            if self.transport is not None and not self.eof:
                self.transport.resume_reading()
        return data


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One TCP (or TLS) connection as httpcore sees it: read, corked write, start_tls."""

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._unsent: list[bytes] = []
        self._unsent_bytes = 0
        self._cork: asyncio.Handle | None = None
        self._cork_left = 0
        self.sends = 0  # transport writes so far (each one TLS record batch, one send())

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        protocol = self._protocol
        if not protocol.received and not protocol.eof:
            try:
                async with asyncio.timeout(timeout):
                    await protocol.wait_readable()
            except TimeoutError:
                raise httpcore.ReadTimeout(f"no data within {timeout} s") from None
        if protocol.received:
            return protocol.take(max_bytes)
        if protocol.error is not None:
            raise httpcore.ReadError(_describe(protocol.error)) from protocol.error
        return b""  # end of stream

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        if self._transport.is_closing():
            raise httpcore.WriteError(_describe(self._protocol.error) or "connection closed")
        self._unsent.append(buffer)
        self._unsent_bytes += len(buffer)
        if self._unsent_bytes >= CORK_BYTES:
            self._flush()
        elif self._cork is None:
            self._cork_left = CORK_ITERATIONS
            self._cork = self._loop.call_soon(self._uncork)
        if self._protocol.paused:
            try:
                async with asyncio.timeout(timeout):
                    await self._protocol.wait_writable()
            except TimeoutError:
                raise httpcore.WriteTimeout(f"peer not reading for {timeout} s") from None

    def _uncork(self) -> None:
        """Count down loop iterations (one call_soon each), then send."""
        self._cork_left -= 1
        if self._cork_left > 0:
            self._cork = self._loop.call_soon(self._uncork)
        else:
            self._flush()

    def _flush(self) -> None:
        if self._cork is not None:
            self._cork.cancel()
            self._cork = None
        if not self._unsent:
            return
        data = b"".join(self._unsent) if len(self._unsent) > 1 else self._unsent[0]
        self._unsent.clear()
        self._unsent_bytes = 0
        if not self._transport.is_closing():
            self.sends += 1
            self._transport.write(data)

    async def aclose(self) -> None:
        # Abort, as anyio's stream does: a graceful TLS close waits for the peer's
        # close_notify, and a loop closed meanwhile (a one-shot push-test) leaks the socket.
        self._flush()
        self._transport.abort()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self._flush()
        try:
            async with asyncio.timeout(timeout):
                transport = await self._loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError:
            self._transport.abort()
            raise httpcore.ConnectTimeout(f"TLS handshake took over {timeout} s") from None
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            self._transport.abort()
            raise httpcore.ConnectError(_describe(exc)) from exc
        if transport is None:  # pragma: no cover - asyncio returns None only for a closed loop
            raise httpcore.ConnectError("TLS handshake failed")
        self._protocol.transport = transport  # flow control now goes through TLS
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        if info == "is_readable":  # an idle connection with data or EOF waiting is dead
            return bool(self._protocol.received) or self._protocol.eof
        return None


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """Connections on the running event loop's transports (see the module docstring)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(
                    _StreamProtocol, host, port, local_addr=local
                )
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(_describe(exc)) from exc
        _set_options(transport, socket_options)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_StreamProtocol, path)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"no connection within {timeout} s") from None
        except OSError as exc:
            raise httpcore.ConnectError(_describe(exc)) from exc
        _set_options(transport, socket_options)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class AsyncioHTTPTransport(httpx.AsyncHTTPTransport):
    """httpx's HTTP transport with its connection pool on ``AsyncioBackend``."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        http2: bool = True,
        limits: httpx.Limits = DEFAULT_LIMITS,
    ) -> None:
        super().__init__(verify=ssl_context, http2=http2, trust_env=False, limits=limits)
        # httpx builds its httpcore pool without a network backend argument: build it here,
        # with the same settings. (tests/push/test_netbackend.py checks the backend is used.)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=http2,
            network_backend=AsyncioBackend(),
        )


def _set_options(
    transport: asyncio.BaseTransport, options: Iterable[httpcore.SOCKET_OPTION] | None
) -> None:
    sock: socket.socket | None = transport.get_extra_info("socket")
    for option in options or ():
        if sock is not None:
            sock.setsockopt(*option)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
