"""A tiny scriptable SIP user agent for tests: send requests, read what comes back.

    async with await SipClient.connect("udp", ("127.0.0.1", 5060)) as ua:
        response = await ua.request("OPTIONS", "sip:127.0.0.1:5060")
        assert response.status == 200

It speaks UDP or TCP through sipushd's own parser, builds well-formed requests (Via with a
fresh z9hG4bK branch and rport, From tag, Call-ID, CSeq, Max-Forwards), answers nothing by
itself, and keeps every message it receives in arrival order.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
from collections.abc import Iterable
from types import TracebackType
from typing import Self

from sipushd.sip import (
    Request,
    Response,
    SipParseError,
    StreamParser,
    make_response,
    parse_message,
    parse_uri,
)
from sipushd.sip.headers import Headers

Message = Request | Response


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, inbox: asyncio.Queue[Message], malformed: list[bytes]) -> None:
        self.inbox = inbox
        self.malformed = malformed

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not data.strip(b"\r\n"):
            return
        try:
            self.inbox.put_nowait(parse_message(data))
        except SipParseError:
            self.malformed.append(data)  # kept for the test to assert on


class SipClient:
    """One SIP endpoint on loopback talking to one server address."""

    def __init__(self, transport_name: str, server: tuple[str, int]) -> None:
        self.transport_name = transport_name
        self.server = server
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.malformed: list[bytes] = []  # datagrams from the server that did not parse
        self.local: tuple[str, int] = ("127.0.0.1", 0)
        self.call_id = secrets.token_hex(8)
        self.from_tag = secrets.token_hex(4)
        self._cseq = itertools.count(1)
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()

    @classmethod
    async def connect(cls, transport_name: str, server: tuple[str, int]) -> Self:
        """Open a UDP socket or a TCP connection towards `server`."""
        client = cls(transport_name.lower(), server)
        loop = asyncio.get_running_loop()
        if client.transport_name == "udp":
            udp, _ = await loop.create_datagram_endpoint(
                lambda: _Datagrams(client.inbox, client.malformed), local_addr=("127.0.0.1", 0)
            )
            client._udp = udp
            client.local = udp.get_extra_info("sockname")[:2]
        else:
            reader, writer = await asyncio.open_connection(*server)
            client._writer = writer
            client.local = writer.get_extra_info("sockname")[:2]
            client._reader_task = asyncio.create_task(client._read(reader))
        return client

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = StreamParser()
        try:
            while data := await reader.read(65536):
                for message in parser.feed(data):
                    self.inbox.put_nowait(message)
        finally:
            self.closed.set()

    @property
    def contact(self) -> str:
        """A Contact URI that reaches this client."""
        host, port = self.local
        return f"sip:ua@{host}:{port};transport={self.transport_name}"

    def build(
        self,
        method: str,
        uri: str,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        to: str | None = None,
        from_: str = "sip:ua@example.org",
        cseq: int | None = None,
        call_id: str | None = None,
    ) -> Request:
        """A well-formed request from this client (§8.1.1)."""
        host, port = self.local
        branch = "z9hG4bK" + secrets.token_hex(8)
        number = next(self._cseq) if cseq is None else cseq
        items = [
            ("Via", f"SIP/2.0/{self.transport_name.upper()} {host}:{port};branch={branch};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<{from_}>;tag={self.from_tag}"),
            ("To", f"<{to or uri}>"),
            ("Call-ID", call_id or self.call_id),
            ("CSeq", f"{number} {method}"),
            *headers,
        ]
        return Request(method, parse_uri(uri), Headers(items), body)

    def send(self, message: Message | bytes) -> None:
        """Send a message (or raw bytes) to the server."""
        data = message if isinstance(message, bytes) else message.to_bytes()
        if self._udp is not None:
            self._udp.sendto(data, self.server)
        else:
            assert self._writer is not None
            self._writer.write(data)

    async def receive(self, timeout: float = 5.0) -> Message:
        """The next message from the server."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def final_response(self, timeout: float = 5.0) -> Response:
        """Skip provisional responses and requests; return the next final response."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.inbox.get()
                if isinstance(message, Response) and message.status >= 200:
                    return message

    async def request(
        self, method: str, uri: str, headers: Iterable[tuple[str, str]] = (), body: bytes = b""
    ) -> Response:
        """Send a request and wait for its final response."""
        self.send(self.build(method, uri, headers, body))
        return await self.final_response()

    async def next_request(self, method: str | None = None, timeout: float = 5.0) -> Request:
        """The next request the server sends us (of `method`, when given)."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.inbox.get()
                if isinstance(message, Request) and method in (None, message.method):
                    return message

    def answer(self, request: Request, status: int, *, to_tag: str | None = None) -> Response:
        """Answer a request the server sent us."""
        response = make_response(request, status, to_tag=to_tag or secrets.token_hex(4))
        self.send(response)
        return response

    async def close(self) -> None:
        """Close the socket or connection."""
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
            if self._reader_task is not None:
                await asyncio.gather(self._reader_task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
