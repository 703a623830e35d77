"""A tiny HTTP/1.1 server on asyncio: h11 parses and frames, one handler answers.

One job: turn bytes on a TCP connection into `HttpRequest`s and the handler's
`HttpResponse`s back into bytes, for the admin API. Rules:

- Keep-alive (RFC 9112 §9.3): a connection serves requests one after the other
  until the client closes it, asks `Connection: close`, or stays idle for
  `idle_timeout` seconds.
- Limits: request heads over `max_head` bytes get 431, bodies over `max_body`
  bytes get 413 (announced by Content-Length or found while reading chunks), and
  at most `max_connections` connections are served at once; more are closed.
- Bad input never takes the server down: a protocol error is answered 400 and the
  connection closed; a handler that raises gets 500 and the error is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

import h11
import structlog

log = structlog.get_logger("sipushd.admin")

__all__ = ["Handler", "HttpRequest", "HttpResponse", "HttpServer", "json_response"]

_SERVER_NAME = b"sipushd-admin"
_READ_SIZE = 65536
_LINGER = 1.0
_LINGER_READS = 64
_REASONS = {status.value: status.phrase for status in HTTPStatus}


@dataclass(frozen=True)
class HttpRequest:
    """One request: method, percent-decoded path segments, query, headers, body."""

    method: str
    target: str
    segments: tuple[str, ...]
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lowered = name.lower()
        for key, value in self.headers:
            if key == lowered:
                return value
        return None


@dataclass(frozen=True)
class HttpResponse:
    """One response; Content-Length is added when it is sent."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(
    status: int, data: Any, headers: tuple[tuple[str, str], ...] = ()
) -> HttpResponse:
    """A JSON response with `data` serialised compactly."""
    body = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return HttpResponse(status, body + b"\n", "application/json", headers)


def _error(status: int, message: str) -> HttpResponse:
    return json_response(status, {"error": message})


def parse_target(target: str) -> tuple[tuple[str, ...], str]:
    """Path segments (each percent-decoded, RFC 3986 §2.1) and the raw query of a target."""
    parts = urlsplit(target)
    segments = tuple(unquote(s) for s in parts.path.split("/") if s)
    return segments, parts.query


class HttpServer:
    """Serves `handler` on one TCP address."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_head: int = 16384,
        max_body: int = 65536,
        max_connections: int = 64,
        idle_timeout: float = 30.0,
    ) -> None:
        self.handler = handler
        self.max_head = max_head
        self.max_body = max_body
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self, host: str, port: int) -> None:
        """Bind and start accepting connections (port 0: any free port)."""
        self._server = await asyncio.start_server(self._accept, host, port)

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the server listens on."""
        assert self._server is not None, "start() was not called"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self, grace: float = 1.0) -> None:
        """Stop listening, close every connection; cancel answers still running after grace."""
        if self._server is not None:
            self._server.close()
        for writer in self._connections.values():
            writer.transport.abort()
        if self._connections:
            _, pending = await asyncio.wait(list(self._connections), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._connections) >= self.max_connections:
            writer.close()
            return
        self._connections[task] = writer
        try:
            await _Connection(self, reader, writer).serve()
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # close(): nobody awaits this task, so end it quietly
        except Exception:
            log.exception("admin connection failed")
        finally:
            self._connections.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _TooLarge(Exception):
    """The request body is over the limit."""


class _Connection:
    """One client connection: requests in order, one response each."""

    def __init__(
        self, server: HttpServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=server.max_head)

    async def serve(self) -> None:
        """Answer requests until the connection must close."""
        while True:
            try:
                request = await self._read_request()
            except h11.RemoteProtocolError as exc:
                status = exc.error_status_hint
                if status == 400 and "exceeds the limit" in str(exc):
                    status = 431
                await self._send_error(status, "bad request")
                return
            except _TooLarge:
                await self._send_error(413, f"request body over {self.server.max_body} bytes")
                return
            if request is None:
                return
            response = await self._answer(request)
            await self._send(response, head_only=request.method == "HEAD")
            if self.conn.our_state is not h11.DONE or self.conn.their_state is not h11.DONE:
                return  # Connection: close, or the client is still sending a body
            self.conn.start_next_cycle()

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            async with asyncio.timeout(self.server.idle_timeout):
                data = await self.reader.read(_READ_SIZE)
            self.conn.receive_data(data)

    async def _read_request(self) -> HttpRequest | None:
        event = await self._next_event()
        if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None
        if not isinstance(event, h11.Request):
            raise h11.RemoteProtocolError("expected a request", error_status_hint=400)
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
        length = next((v for k, v in headers if k == "content-length"), None)
        if length is not None and int(length) > self.server.max_body:
            raise _TooLarge
        if self.conn.they_are_waiting_for_100_continue:
            go_on = h11.InformationalResponse(status_code=100, headers=[])
            self.writer.write(self.conn.send(go_on) or b"")
        body = bytearray()
        while True:
            event = await self._next_event()
            if isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.server.max_body:
                    raise _TooLarge
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise h11.RemoteProtocolError("incomplete request", error_status_hint=400)
        segments, query = parse_target(target)
        return HttpRequest(method, target, segments, query, headers, bytes(body))

    async def _answer(self, request: HttpRequest) -> HttpResponse:
        try:
            return await self.server.handler(request)
        except Exception:
            log.exception("admin request failed", method=request.method, target=request.target)
            return _error(500, "internal error")

    async def _send_error(self, status: int, message: str) -> None:
        if self.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            with contextlib.suppress(h11.LocalProtocolError):
                await self._send(_error(status, message), close=True)
        await self._linger()

    async def _linger(self) -> None:
        """Half-close, then drop what the client still sends for a moment.

        Closing with unread input makes the kernel send a reset, which can destroy the
        error response before the client reads it (RFC 9112 §9.6).
        """
        if not self.writer.can_write_eof():
            return
        self.writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(_LINGER):
                for _ in range(_LINGER_READS):
                    if not await self.reader.read(_READ_SIZE):
                        break

    async def _send(
        self, response: HttpResponse, *, head_only: bool = False, close: bool = False
    ) -> None:
        body = b"" if head_only else response.body
        headers = [
            (b"Server", _SERVER_NAME),
            (b"Content-Type", response.content_type.encode("latin-1")),
            (b"Content-Length", str(len(response.body)).encode()),
            *((k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers),
        ]
        if close:
            headers.append((b"Connection", b"close"))
        reason = _REASONS.get(response.status, "").encode()
        head = h11.Response(status_code=response.status, headers=headers, reason=reason)
        data = self.conn.send(head) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        await self.writer.drain()
