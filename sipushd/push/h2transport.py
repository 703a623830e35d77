"""An httpx transport speaking HTTP/2 with ``h2`` on an event-loop protocol, for FCM pushes.

httpx stays the client API (``httpx.Request`` in, ``httpx.Response`` out, httpx's
exceptions); this replaces httpcore underneath, the way aioapns drives ``h2`` for
APNs. Measured with callgrind, httpcore's HTTP/2 path cost ~3 M instructions per
push even with the Huffman cache (pool bookkeeping that walks every queued
request, anyio locks that yield to the loop on each acquisition, a trace object
per step, a read loop per stream): three times what a whole APNs push costs.

This module is the pool: one ``h2connection.Connection`` per origin carries every
request as a stream (the HTTP/2 rules are kept there), opened on first use and
replaced once it ends (GOAWAY, lost, stream ids used up); concurrent requests share
one connection attempt. A request the server did not process (RFC 9113 §6.8 GOAWAY
above it, §8.7 REFUSED_STREAM) is sent again on a new connection, at most
``RETRIES_UNPROCESSED`` times.

``H2Transport.post`` is the same exchange without the httpx objects: headers built
once by the caller, the answer as an ``H2Answer`` (status, headers, body). FCM's
pushes use it; ``Request.__init__`` and ``Response.aread`` were ~8% of a push.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Any

import httpx

from sipushd.push.h2connection import Connection, H2Answer, Unprocessed

__all__ = ["H2Answer", "H2Transport"]

RETRIES_UNPROCESSED = 2  # new attempts for a request the server did not process


class H2Transport(httpx.AsyncBaseTransport):
    """HTTP/2-only httpx transport: one ``Connection`` per origin, replaced when it ends."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl_context = ssl_context
        self._connections: dict[tuple[str, int], Connection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Future[Connection]] = {}
        self._closed = False

    def connection(self, host: str, port: int) -> Connection | None:
        """The connection to ``host:port`` now in use, if any (for tests and metrics)."""
        return self._connections.get((host, port))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        origin = _origin(url)
        timeouts: dict[str, Any] = request.extensions.get("timeout", {})
        for _ in range(RETRIES_UNPROCESSED + 1):
            conn = await self._usable(origin, timeouts)
            try:
                return await conn.request(request, timeouts)
            except Unprocessed:
                continue  # RFC 9113 §8.7: safe to send again
        raise _refused_everywhere()

    async def post(
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeouts: Mapping[str, Any],
    ) -> H2Answer:
        """POST ``body`` to ``url``: ``handle_async_request`` without the httpx objects.

        ``headers`` are sent as given after the pseudo-headers: lowercase names, no
        connection-specific fields (RFC 9113 §8.2.2), credentials as
        ``NeverIndexedHeaderTuple``. Raises httpx's exceptions, as that method does.
        """
        origin = _origin(url)
        path = url.raw_path
        for _ in range(RETRIES_UNPROCESSED + 1):
            conn = await self._usable(origin, timeouts)
            try:
                return await conn.exchange(
                    conn.pseudo_headers(b"POST", path) + headers, body, timeouts
                )
            except Unprocessed:
                continue  # RFC 9113 §8.7: safe to send again
        raise _refused_everywhere()

    async def _usable(self, origin: tuple[str, int], timeouts: Mapping[str, Any]) -> Connection:
        conn = self._connections.get(origin)
        if conn is None or not conn.usable:
            conn = await self._connect(origin, timeouts.get("connect"))
        return conn

    async def _connect(self, origin: tuple[str, int], timeout: float | None) -> Connection:
        """The new connection to ``origin``; concurrent requests share one attempt."""
        if self._closed:
            raise httpx.ConnectError("transport closed")
        pending = self._connecting.get(origin)
        if pending is None:
            task = asyncio.get_running_loop().create_task(self._open(origin, timeout))
            pending = self._connecting[origin] = task
            task.add_done_callback(lambda done: self._connected(origin, done))
        return await asyncio.shield(pending)

    def _connected(self, origin: tuple[str, int], task: asyncio.Future[Connection]) -> None:
        self._connecting.pop(origin, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have given up meanwhile

    async def _open(self, origin: tuple[str, int], timeout: float | None) -> Connection:
        host, port = origin
        authority = host if port == 443 else f"{host}:{port}"
        loop = asyncio.get_running_loop()
        conn: Connection | None = None
        try:
            async with asyncio.timeout(timeout):
                transport, conn = await loop.create_connection(
                    lambda: Connection(authority.encode()),
                    host,
                    port,
                    ssl=self._ssl_context,
                    server_hostname=host,
                )
                ssl_object = transport.get_extra_info("ssl_object")
                alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
                if alpn not in (None, "h2"):  # None: no ALPN, HTTP/2 by prior knowledge
                    raise httpx.ConnectError(f"{authority} offers {alpn}, not HTTP/2")
                # Streams wait for the server's limit: one over it would be refused.
                await conn.settings_received
        except TimeoutError:
            if conn is not None:
                conn.close()
            raise httpx.ConnectTimeout(f"no connection to {authority} within {timeout} s") from None
        except httpx.TransportError as exc:
            if conn is not None:
                conn.close()
            if isinstance(exc, httpx.ConnectError):
                raise
            raise httpx.ConnectError(f"{authority}: {exc}") from exc
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"{type(exc).__name__}: {exc}") from exc
        if self._closed:
            conn.close()
            raise httpx.ConnectError("transport closed")
        self._connections[origin] = conn
        return conn

    async def aclose(self) -> None:
        self._closed = True
        for conn in self._connections.values():
            conn.close()
        self._connections.clear()
        for pending in list(self._connecting.values()):
            pending.cancel()


def _origin(url: httpx.URL) -> tuple[str, int]:
    if url.scheme != "https":
        raise httpx.UnsupportedProtocol(f"HTTP/2 over TLS only, not {url.scheme!r}")
    return (url.host, url.port or 443)


def _refused_everywhere() -> httpx.RemoteProtocolError:
    return httpx.RemoteProtocolError("the server refused the request on every connection")
