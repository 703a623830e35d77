"""TransportManager: the listeners, the flow table and the send path of sipushd.

Input: every parsed message is handed to `on_message(message, source)`; requests already
carry received/rport in their top Via (RFC 3261 §18.2.1, RFC 3581). `source.flow` names the
connection of a stream message so answers and later requests can use it (RFC 3261 §18.2.2,
RFC 5626). Output: `send()` never blocks; a new stream connection is opened in a task and
the bytes wait for it. Where a response goes is computed by `response_destination()`; send()
sends to exactly the destination it is given.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from contextlib import suppress

from sipushd.sip import Endpoint, Request, Response
from sipushd.transport.context import (
    FlowClosedHandler,
    MessageHandler,
    ParseErrorHandler,
    TransportContext,
)
from sipushd.transport.limits import TransportError, TransportLimits, TransportStats
from sipushd.transport.routing import family_of, normalize_host
from sipushd.transport.stream import StreamFlow
from sipushd.transport.udp import UdpListener

TRANSPORTS = ("udp", "tcp", "tls")
# Receive buffer asked for on UDP sockets (the kernel caps it at net.core.rmem_max): the
# default (~208 KiB on Linux, a few hundred datagrams) drops requests under a burst of
# REGISTERs and every drop costs a retransmission (RFC 3261 §17.1.2.2, timer E).
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


class TransportManager:
    """UDP/TCP/TLS listeners and connections behind one send() and one on_message()."""

    def __init__(
        self,
        on_message: MessageHandler,
        *,
        limits: TransportLimits | None = None,
        on_flow_closed: FlowClosedHandler | None = None,
        on_parse_error: ParseErrorHandler | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._ctx = TransportContext(
            on_message, limits or TransportLimits(), on_flow_closed, on_parse_error
        )
        self._client_ssl = client_ssl_context
        self._udp: list[tuple[Endpoint, UdpListener]] = []
        self._servers: list[tuple[Endpoint, asyncio.Server]] = []
        self._connects: set[asyncio.Task[None]] = set()

    @property
    def limits(self) -> TransportLimits:
        """The limits this manager enforces."""
        return self._ctx.limits

    async def listen(
        self, transport: str, host: str, port: int, ssl_context: ssl.SSLContext | None = None
    ) -> Endpoint:
        """Bind a listener ("udp", "tcp" or "tls"; tls needs ssl_context); return its address."""
        transport = transport.lower()
        if transport not in TRANSPORTS:
            raise ValueError(f"unsupported transport {transport!r}")
        if (transport == "tls") != (ssl_context is not None):
            raise ValueError("an ssl_context is required for tls and only for tls")
        if self._ctx.closing:
            raise TransportError("transport manager is closed")
        host = await _resolve_bind_host(host, port)
        if transport == "udp":
            return await self._listen_udp(host, port)
        return await self._listen_stream(transport, host, port, ssl_context)

    async def _listen_udp(self, host: str, port: int) -> Endpoint:
        loop = asyncio.get_running_loop()
        family = family_of(host)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # One socket per family: a v4 listener and a v6 one may share a port.
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            with suppress(OSError):  # best effort: a smaller buffer still works
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
            sock.bind((host, port))
            sock.setblocking(False)
            _, protocol = await loop.create_datagram_endpoint(
                lambda: UdpListener(self._ctx), sock=sock
            )
        except BaseException:
            sock.close()
            raise
        bound = sock.getsockname()
        endpoint = Endpoint("udp", bound[0], bound[1])
        self._udp.append((endpoint, protocol))
        return endpoint

    async def _listen_stream(
        self, transport: str, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> Endpoint:
        loop = asyncio.get_running_loop()
        ctx = self._ctx
        server = await loop.create_server(
            lambda: StreamFlow(ctx, transport),
            host,
            port,
            ssl=ssl_context,
            reuse_address=True,
            ssl_handshake_timeout=ctx.limits.connect_timeout if ssl_context else None,
        )
        bound = server.sockets[0].getsockname()
        endpoint = Endpoint(transport, bound[0], bound[1])
        self._servers.append((endpoint, server))
        return endpoint

    def send(self, message: Request | Response, destination: Endpoint) -> Endpoint:
        """Send without blocking; return the Endpoint used (with the flow id for streams).

        UDP goes out of the first UDP listener of the destination's address family. TCP/TLS
        use `destination.flow` while it is alive, else a connection to host:port, else a
        new connection opened in a task (bytes are queued). Raises TransportError when no
        listener or connection can carry the message.
        """
        return self.send_bytes(message.to_bytes(), destination)

    def send_bytes(self, data: bytes, destination: Endpoint) -> Endpoint:
        """send() for an already serialised message."""
        ctx = self._ctx
        if ctx.closing:
            raise TransportError("transport manager is closed")
        if destination.transport == "udp":
            self._udp_for(destination.host).sendto(data, destination.host, destination.port)
            ctx.counters.messages_out += 1
            return destination
        flow = self._flow_for(destination)
        flow.write(data)
        ctx.counters.messages_out += 1
        return flow.endpoint

    def udp_backlog(self) -> tuple[int, int]:
        """(bytes waiting, bytes they may reach) in the receive queues of every UDP socket."""
        queues = [listener.receive_queue() for _, listener in self._udp]
        return sum(q[0] for q in queues), sum(q[1] for q in queues)

    def flow_alive(self, endpoint: Endpoint) -> bool:
        """True while the connection named by endpoint.flow accepts output."""
        if endpoint.flow is None:
            return False
        flow = self._ctx.flows.get(endpoint.flow)
        return flow is not None and flow.writable

    def close_flow(self, endpoint: Endpoint) -> None:
        """Close the connection named by endpoint.flow (flushing output), if it exists."""
        if endpoint.flow is not None and (flow := self._ctx.flows.get(endpoint.flow)):
            flow.close()

    def local_endpoint(
        self, transport: str, family: socket.AddressFamily = socket.AF_INET
    ) -> Endpoint:
        """The first listener of that transport and family (its host may be a wildcard)."""
        transport = transport.lower()
        for endpoint in self.listeners():
            if endpoint.transport == transport and family_of(endpoint.host) == family:
                return endpoint
        raise TransportError(f"no {transport} listener for {family.name}")

    def listeners(self) -> list[Endpoint]:
        """Every bound listener, in the order listen() was called per kind (udp first)."""
        return [endpoint for endpoint, _ in self._udp] + [e for e, _ in self._servers]

    def stats(self) -> TransportStats:
        """A snapshot of the counters and of open connections per transport."""
        connections = {"tcp": 0, "tls": 0}
        for flow in self._ctx.flows.values():
            connections[flow.transport_name] = connections.get(flow.transport_name, 0) + 1
        return self._ctx.counters.snapshot(connections)

    async def close(self, grace: float = 2.0) -> None:
        """Stop listening, close every connection; abort what has not closed after grace."""
        ctx = self._ctx
        if ctx.closing:
            return
        ctx.closing = True
        for _, server in self._servers:
            server.close()
        for _, listener in self._udp:
            listener.close()
        for task in list(self._connects):
            task.cancel()
        flows = list(ctx.flows.values())
        for flow in flows:
            flow.close()
        waits = [asyncio.ensure_future(flow.wait_closed()) for flow in flows]
        waits += [asyncio.ensure_future(listener.closed) for _, listener in self._udp]
        waits += [asyncio.ensure_future(server.wait_closed()) for _, server in self._servers]
        waits += list(self._connects)
        if waits:
            _, pending = await asyncio.wait(waits, timeout=grace)
            for flow in flows:
                flow.abort()
            for future in pending:
                future.cancel()
            with suppress(asyncio.CancelledError):
                await asyncio.gather(*pending, return_exceptions=True)

    # -- internals ------------------------------------------------------------------

    def _udp_for(self, host: str) -> UdpListener:
        family = family_of(host)
        for endpoint, listener in self._udp:
            if family_of(endpoint.host) == family:
                return listener
        self._ctx.counters.send_errors += 1
        raise TransportError(f"no udp listener for {family.name}")

    def _flow_for(self, destination: Endpoint) -> StreamFlow:
        flows = self._ctx.flows
        if destination.flow is not None:
            flow = flows.get(destination.flow)
            if flow is not None and flow.writable:
                return flow
        host = normalize_host(destination.host)
        key = (destination.transport, host, destination.port)
        existing = self._ctx.by_peer.get(key)
        if existing is not None and existing.writable:
            return existing
        return self._connect(destination.transport, host, destination.port)

    def _connect(self, transport: str, host: str, port: int) -> StreamFlow:
        ctx = self._ctx
        if transport not in ("tcp", "tls"):
            raise TransportError(f"unsupported transport {transport!r}")
        if ctx.at_capacity():
            ctx.counters.rejected_connections += 1
            raise TransportError("connection limit reached")
        ssl_context = self._client_context() if transport == "tls" else None
        flow = StreamFlow(ctx, transport, Endpoint(transport, host, port, ctx.next_flow_id()))
        task = asyncio.get_running_loop().create_task(self._open(flow, host, port, ssl_context))
        self._connects.add(task)
        task.add_done_callback(self._connects.discard)
        return flow

    async def _open(
        self, flow: StreamFlow, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> None:
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(
                loop.create_connection(
                    lambda: flow,
                    host,
                    port,
                    ssl=ssl_context,
                    server_hostname=host if ssl_context is not None else None,
                ),
                self._ctx.limits.connect_timeout,
            )
        except asyncio.CancelledError:
            flow.connect_failed()
            raise
        except Exception:
            # Refused, unreachable, timed out or a bad certificate: the flow failed.
            flow.connect_failed()

    def _client_context(self) -> ssl.SSLContext:
        if self._client_ssl is None:
            self._client_ssl = ssl.create_default_context()
        return self._client_ssl


async def _resolve_bind_host(host: str, port: int) -> str:
    """An IP literal to bind to: literals pass through, names are resolved once."""
    host = host.strip("[]") or "0.0.0.0"
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
        return str(infos[0][4][0])
