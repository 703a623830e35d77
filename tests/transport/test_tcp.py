"""TCP on real loopback sockets: framing, flows, keep-alive, errors, limits, outgoing."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import NamedTuple

import pytest

from sipushd.sip import Endpoint, Response, make_response, parse_message
from sipushd.transport import TransportError, TransportLimits, response_destination
from tests.transport.conftest import ClientFactory, HarnessFactory
from tests.transport.helpers import (
    WAIT,
    Harness,
    close_writer,
    needs_ipv6,
    read_message,
    read_to_eof,
    sip_request,
)

TCP_VIA = "SIP/2.0/TCP 127.0.0.1:5070;rport;branch=z9hG4bK-t"


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (with a safety net) until predicate() holds."""

    for _ in range(int(WAIT / 0.005)):
        if predicate():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("condition never held")


class Connection(NamedTuple):
    """A harness listening on TCP 127.0.0.1, its port, and one client connected to it."""

    harness: Harness
    port: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter


Connect = Callable[..., Awaitable[Connection]]


@pytest.fixture
def connect(make_harness: HarnessFactory, open_client: ClientFactory) -> Connect:
    """Start a TCP listener (with the given limits) and connect one client to it."""

    async def factory(limits: TransportLimits | None = None) -> Connection:
        harness = make_harness(limits)
        bound = await harness.manager.listen("tcp", "127.0.0.1", 0)
        reader, writer = await open_client("127.0.0.1", bound.port)
        return Connection(harness, bound.port, reader, writer)

    return factory


async def ping(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Send a double-CRLF keep-alive and expect the single-CRLF pong (RFC 5626 §3.5.1)."""
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"


@pytest.mark.asyncio
async def test_request_has_flow_and_response_uses_the_same_connection(connect: Connect) -> None:
    harness, _, reader, writer = await connect()
    writer.write(sip_request(via=TCP_VIA))
    message, source = await harness.recorder.request()
    local_port = writer.get_extra_info("sockname")[1]
    assert source.transport == "tcp" and source.flow is not None
    assert (source.host, source.port) == ("127.0.0.1", local_port)
    assert message.top_via.rport == str(local_port)
    assert harness.manager.flow_alive(source)

    response = make_response(message, 200)
    destination = response_destination(response, source)
    assert destination.flow == source.flow
    assert harness.manager.send(response, destination) == source
    answer = parse_message(await read_message(reader))
    assert isinstance(answer, Response) and answer.status == 200
    assert harness.manager.stats().connections == {"tcp": 1, "tls": 0}
    await close_writer(writer)


@pytest.mark.asyncio
async def test_two_messages_in_one_segment(connect: Connect) -> None:
    harness, _, _, writer = await connect()
    writer.write(
        sip_request(via=TCP_VIA, call_id="one", body=b"v=0\r\n")
        + sip_request(via=TCP_VIA, call_id="two")
    )
    first, source1 = await harness.recorder.request()
    second, source2 = await harness.recorder.request()
    assert (first.call_id, first.body, second.call_id) == ("one", b"v=0\r\n", "two")
    assert source1 == source2
    await close_writer(writer)


@pytest.mark.parametrize("cut_after", [b"Call-ID", b"hello"], ids=["in-head", "in-body"])
@pytest.mark.asyncio
async def test_message_split_across_segments(connect: Connect, cut_after: bytes) -> None:
    harness, _, _, writer = await connect()
    data = sip_request(via=TCP_VIA, call_id="split", body=b"hello body")
    cut = data.index(cut_after) + 3
    writer.write(data[:cut])
    await until(lambda: harness.manager.stats().bytes_in == cut)
    assert harness.recorder.messages.empty()
    writer.write(data[cut:])
    message, _ = await harness.recorder.request()
    assert message.call_id == "split" and message.body == b"hello body"
    await close_writer(writer)


@pytest.mark.asyncio
async def test_ping_gets_a_single_crlf_pong(connect: Connect) -> None:
    harness, _, reader, writer = await connect()
    await ping(reader, writer)
    writer.write(b"\r\n\r\n\r\n\r\n" + sip_request(via=TCP_VIA, call_id="after-pings"))
    assert await asyncio.wait_for(reader.readexactly(4), WAIT) == b"\r\n\r\n"
    message, _ = await harness.recorder.request()
    assert message.call_id == "after-pings"
    assert harness.manager.stats().keepalives == 3
    await close_writer(writer)


@pytest.mark.asyncio
async def test_parse_error_gets_400_then_close(connect: Connect) -> None:
    harness, _, reader, writer = await connect()
    writer.write(
        sip_request(via=TCP_VIA, call_id="bad-tcp").replace(b"Max-Forwards: 70", b"Max-Forwards: x")
    )
    data = await read_to_eof(reader)
    answer = parse_message(data)
    assert isinstance(answer, Response)
    assert answer.status == 400 and answer.call_id == "bad-tcp"
    reason, source = await harness.recorder.parse_error()
    assert "max-forwards" in reason.lower() and source.flow is not None
    assert await harness.recorder.closed_flow() == source
    assert not harness.manager.flow_alive(source)
    assert harness.recorder.messages.empty()
    await close_writer(writer)


@pytest.mark.asyncio
async def test_garbage_on_a_stream_just_closes(connect: Connect) -> None:
    harness, _, reader, writer = await connect()
    writer.write(b"\x16\x03\x01 not sip at all\r\n\r\n")
    assert await read_to_eof(reader) == b""
    await harness.recorder.parse_error()
    await harness.recorder.closed_flow()
    await close_writer(writer)


@pytest.mark.asyncio
async def test_oversize_message_closes(connect: Connect) -> None:
    harness, _, reader, writer = await connect(TransportLimits(max_message_size=2048))
    writer.write(sip_request(via=TCP_VIA, body=b"x" * 4096))
    data = await read_to_eof(reader)
    assert data == b"" or data.startswith(b"SIP/2.0 413")
    reason, _ = await harness.recorder.parse_error()
    assert "large" in reason
    await harness.recorder.closed_flow()
    assert harness.recorder.messages.empty()
    await close_writer(writer)


@pytest.mark.asyncio
async def test_endless_head_closes(connect: Connect) -> None:
    harness, _, reader, writer = await connect(TransportLimits(max_message_size=2048))
    writer.write(b"REGISTER sip:example.org SIP/2.0\r\n" + b"X-Filler: aaaaaaaa\r\n" * 200)
    await read_to_eof(reader)
    await harness.recorder.closed_flow()
    await close_writer(writer)


@pytest.mark.asyncio
async def test_idle_connection_is_closed(connect: Connect) -> None:
    harness, _, reader, writer = await connect(TransportLimits(idle_timeout=0.2))
    await ping(reader, writer)
    assert await read_to_eof(reader) == b""
    closed = await harness.recorder.closed_flow()
    assert closed.transport == "tcp" and not harness.manager.flow_alive(closed)
    assert harness.manager.stats().idle_closed == 1
    await close_writer(writer)


@pytest.mark.asyncio
async def test_connections_beyond_the_limit_are_refused(
    connect: Connect, open_client: ClientFactory
) -> None:
    harness, port, reader1, writer1 = await connect(TransportLimits(max_connections=1))
    await ping(reader1, writer1)
    reader2, writer2 = await open_client("127.0.0.1", port)
    assert await read_to_eof(reader2) == b""
    assert harness.manager.stats().rejected_connections == 1
    # The first connection is unaffected; once it leaves, a new one is accepted.
    await ping(reader1, writer1)
    await close_writer(writer1)
    await harness.recorder.closed_flow()
    reader3, writer3 = await open_client("127.0.0.1", port)
    await ping(reader3, writer3)
    await close_writer(writer2)
    await close_writer(writer3)


@pytest.mark.asyncio
async def test_flow_closed_when_the_client_leaves(connect: Connect) -> None:
    harness, _, _, writer = await connect()
    writer.write(sip_request(via=TCP_VIA))
    _, source = await harness.recorder.request()
    assert harness.manager.flow_alive(source)
    await close_writer(writer)
    assert await harness.recorder.closed_flow() == source
    assert not harness.manager.flow_alive(source)
    assert harness.manager.stats().connections["tcp"] == 0


class SipServer:
    """A plain asyncio TCP/TLS server standing in for a remote SIP peer."""

    def __init__(self) -> None:
        self.connections = 0
        self.messages: asyncio.Queue[bytes] = asyncio.Queue()
        self.writers: list[asyncio.StreamWriter] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                self.messages.put_nowait(await read_message(reader))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def message(self) -> bytes:
        return await asyncio.wait_for(self.messages.get(), WAIT)


async def start_server(
    host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None
) -> tuple[SipServer, asyncio.Server, int]:
    peer = SipServer()
    server = await asyncio.start_server(peer.handle, host, 0, ssl=ssl_context)
    return peer, server, server.sockets[0].getsockname()[1]


async def stop_server(peer: SipServer, server: asyncio.Server) -> None:
    for writer in peer.writers:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.mark.asyncio
async def test_send_opens_a_connection_and_reuses_it(make_harness: HarnessFactory) -> None:
    harness = make_harness()
    await harness.manager.listen("tcp", "127.0.0.1", 0)
    peer, server, port = await start_server()
    request = parse_message(sip_request(via=TCP_VIA, call_id="out-1"))
    used = harness.manager.send(request, Endpoint("tcp", "127.0.0.1", port))
    assert used.flow is not None and (used.host, used.port) == ("127.0.0.1", port)
    assert harness.manager.flow_alive(used)
    assert b"Call-ID: out-1" in await peer.message()
    again = harness.manager.send(request.replace(body=b"2"), Endpoint("tcp", "127.0.0.1", port))
    assert again == used
    assert (await peer.message()).endswith(b"\r\n\r\n2")
    assert peer.connections == 1
    # The peer answers over the same connection; it arrives on the same flow.
    response = make_response(request, 200).to_bytes()
    peer.writers[0].write(response)
    answer, source = await harness.recorder.message()
    assert isinstance(answer, Response) and source == used
    await stop_server(peer, server)
    assert await harness.recorder.closed_flow() == used


@pytest.mark.asyncio
async def test_failed_connect_reports_the_flow_closed(make_harness: HarnessFactory) -> None:
    harness = make_harness(TransportLimits(connect_timeout=2.0))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]  # bound, never listening: refused
        used = harness.manager.send(
            parse_message(sip_request()), Endpoint("tcp", "127.0.0.1", dead_port)
        )
        assert await harness.recorder.closed_flow() == used
    assert not harness.manager.flow_alive(used)
    assert harness.manager.stats().connect_failures == 1


@pytest.mark.asyncio
async def test_queued_output_beyond_max_buffer_closes_the_flow(
    make_harness: HarnessFactory,
) -> None:
    harness = make_harness(TransportLimits(max_buffer=1024))
    peer, server, port = await start_server()
    request = parse_message(sip_request(body=b"x" * 2048))
    used = harness.manager.send(request, Endpoint("tcp", "127.0.0.1", port))
    assert await harness.recorder.closed_flow() == used
    assert harness.manager.stats().overflow_closed == 1
    assert not harness.manager.flow_alive(used)
    await stop_server(peer, server)


@pytest.mark.asyncio
async def test_dead_flow_falls_back_to_host_and_port(make_harness: HarnessFactory) -> None:
    harness = make_harness()
    peer, server, port = await start_server()
    request = parse_message(sip_request(call_id="fallback"))
    used = harness.manager.send(request, Endpoint("tcp", "127.0.0.1", port, flow=12345))
    assert used.flow != 12345
    assert b"Call-ID: fallback" in await peer.message()
    await stop_server(peer, server)


@needs_ipv6
@pytest.mark.asyncio
async def test_ipv6_listener_and_outgoing(
    make_harness: HarnessFactory, open_client: ClientFactory
) -> None:
    harness = make_harness()
    bound = await harness.manager.listen("tcp", "::1", 0)
    assert bound.host == "::1"
    assert harness.manager.local_endpoint("tcp", socket.AF_INET6) == bound
    reader, writer = await open_client("::1", bound.port)
    writer.write(sip_request(via="SIP/2.0/TCP [::1]:5070;branch=z9hG4bK-6"))
    message, source = await harness.recorder.request()
    assert source.host == "::1" and message.top_via.received is None
    harness.manager.send(
        make_response(message, 200), response_destination(make_response(message, 200), source)
    )
    assert (await read_message(reader)).startswith(b"SIP/2.0 200")
    await close_writer(writer)
    peer, server, port = await start_server("::1")
    used = harness.manager.send(message, Endpoint("tcp", "::1", port))
    assert used.host == "::1"
    assert b"REGISTER" in await peer.message()
    await stop_server(peer, server)


@pytest.mark.asyncio
async def test_close_closes_listeners_and_connections(
    connect: Connect, open_client: ClientFactory
) -> None:
    harness, port, reader, writer = await connect()
    writer.write(b"\r\n\r\n")
    await asyncio.wait_for(reader.readexactly(2), WAIT)
    await harness.manager.close()
    assert await read_to_eof(reader) == b""
    assert harness.manager.stats().connections["tcp"] == 0
    with pytest.raises(OSError):
        await open_client("127.0.0.1", port)
    with pytest.raises(TransportError):
        harness.manager.send(parse_message(sip_request()), Endpoint("tcp", "127.0.0.1", port))
    await close_writer(writer)
