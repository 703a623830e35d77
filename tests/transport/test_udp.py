"""UDP on real loopback sockets: requests in with received/rport, responses out to rport,
keep-alives, malformed datagrams, IPv6."""

from __future__ import annotations

import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from sipushd.sip import Endpoint, Response, make_response, parse_message
from sipushd.transport import TransportError, response_destination
from sipushd.transport.manager import UDP_RECEIVE_BUFFER
from sipushd.transport.wire import STUN_MAGIC
from tests.transport.conftest import HarnessFactory, UdpPeerFactory
from tests.transport.helpers import Harness, UdpPeer, needs_ipv6, sip_request


class UdpSetup(NamedTuple):
    """A harness listening on UDP 127.0.0.1, one peer, and the (host, port) to send to."""

    harness: Harness
    bound: Endpoint
    peer: UdpPeer
    target: tuple[str, int]


ListenUdp = Callable[[], Awaitable[UdpSetup]]


@pytest.fixture
def listen_udp(make_harness: HarnessFactory, udp_peer: UdpPeerFactory) -> ListenUdp:
    """Start a UDP listener on 127.0.0.1 and open one peer to talk to it."""

    async def factory() -> UdpSetup:
        harness = make_harness()
        bound = await harness.manager.listen("udp", "127.0.0.1", 0)
        return UdpSetup(harness, bound, await udp_peer(), ("127.0.0.1", bound.port))

    return factory


@pytest.mark.asyncio
async def test_request_in_response_out_to_rport(listen_udp: ListenUdp) -> None:
    harness, bound, peer, target = await listen_udp()
    assert bound.transport == "udp" and bound.port > 0
    # sent-by names a port nobody listens on: only rport can bring the answer back.
    peer.send(
        sip_request(via="SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-u1"),
        target,
    )

    message, source = await harness.recorder.request()
    assert source == Endpoint("udp", "127.0.0.1", peer.port)
    assert message.top_via.rport == str(peer.port)
    assert message.top_via.received == "127.0.0.1"

    response = make_response(message, 200)
    destination = response_destination(response, source)
    assert destination == Endpoint("udp", "127.0.0.1", peer.port)
    assert harness.manager.send(response, destination) == destination

    answer = parse_message(await peer.receive())
    assert isinstance(answer, Response)
    assert answer.status == 200 and answer.top_via.branch == "z9hG4bK-u1"
    stats = harness.manager.stats()
    assert stats.messages_in == 1 and stats.messages_out == 1


@pytest.mark.asyncio
async def test_received_added_when_sent_by_differs(listen_udp: ListenUdp) -> None:
    harness, _, peer, target = await listen_udp()
    peer.send(sip_request(via="SIP/2.0/UDP 10.1.2.3:5070;branch=z9hG4bK-u2"), target)
    message, _ = await harness.recorder.request()
    assert message.top_via.received == "127.0.0.1"
    assert message.top_via.rport is None


@pytest.mark.asyncio
async def test_responses_are_delivered_unchanged(listen_udp: ListenUdp) -> None:
    harness, _, peer, target = await listen_udp()
    raw = make_response(parse_message(sip_request()), 180).to_bytes()
    peer.send(raw, target)
    message, source = await harness.recorder.message()
    assert isinstance(message, Response) and message.status == 180
    assert message.top_via.received is None
    assert source.port == peer.port


@pytest.mark.asyncio
async def test_keepalives_are_ignored_and_stun_is_answered(listen_udp: ListenUdp) -> None:
    harness, _, peer, target = await listen_udp()
    peer.send(b"\r\n\r\n", target)
    peer.send(b"\r\n", target)
    binding = struct.pack("!HH", 0x0001, 0) + STUN_MAGIC + b"T" * 12
    peer.send(binding, target)
    answer = await peer.receive()
    assert answer[:2] == b"\x01\x01" and answer[8:20] == b"T" * 12
    # A SIP message sent after the keep-alives is the first thing delivered.
    peer.send(b"\r\n" + sip_request(call_id="after-keepalive"), target)
    message, _ = await harness.recorder.request()
    assert message.call_id == "after-keepalive"
    assert harness.recorder.parse_errors.empty()
    assert harness.manager.stats().keepalives == 3


@pytest.mark.asyncio
async def test_malformed_request_gets_400_when_possible(listen_udp: ListenUdp) -> None:
    harness, _, peer, target = await listen_udp()
    bad = sip_request(call_id="bad-1").replace(b"Max-Forwards: 70", b"Max-Forwards: many")
    peer.send(bad, target)
    answer = parse_message(await peer.receive())
    assert isinstance(answer, Response)
    assert answer.status == 400 and answer.call_id == "bad-1"
    reason, source = await harness.recorder.parse_error()
    assert reason and source.port == peer.port
    assert harness.recorder.messages.empty()


@pytest.mark.asyncio
async def test_unanswerable_garbage_is_dropped(listen_udp: ListenUdp) -> None:
    harness, _, peer, target = await listen_udp()
    peer.send(b"HELLO THERE\r\n\r\n", target)
    await harness.recorder.parse_error()
    peer.send(sip_request(call_id="next"), target)
    message, _ = await harness.recorder.request()
    assert message.call_id == "next"
    assert peer.received.empty()
    assert harness.manager.stats().parse_errors == 1


@needs_ipv6
@pytest.mark.asyncio
async def test_ipv6_request_and_response(
    make_harness: HarnessFactory, udp_peer: UdpPeerFactory
) -> None:
    harness = make_harness()
    await harness.manager.listen("udp", "127.0.0.1", 0)
    bound = await harness.manager.listen("udp", "::1", 0)
    assert bound.host == "::1"
    peer = await udp_peer("::1")
    peer.send(sip_request(via="SIP/2.0/UDP [::1]:9;rport;branch=z9hG4bK-v6"), ("::1", bound.port))
    message, source = await harness.recorder.request()
    assert source.host == "::1" and message.top_via.rport == str(peer.port)
    destination = response_destination(make_response(message, 200), source)
    harness.manager.send(make_response(message, 200), destination)
    answer = parse_message(await peer.receive())
    assert isinstance(answer, Response) and answer.status == 200
    assert harness.manager.local_endpoint("udp", socket.AF_INET6) == bound
    assert harness.manager.local_endpoint("udp").host == "127.0.0.1"


@pytest.mark.asyncio
async def test_send_without_a_listener_of_that_family_fails(make_harness: HarnessFactory) -> None:
    harness = make_harness()
    await harness.manager.listen("udp", "127.0.0.1", 0)
    message = parse_message(sip_request())
    with pytest.raises(TransportError):
        harness.manager.send(message, Endpoint("udp", "::1", 5060))


def _rmem_max() -> int | None:
    limit_file = Path("/proc/sys/net/core/rmem_max")
    return int(limit_file.read_text()) if limit_file.is_file() else None


@pytest.mark.asyncio
async def test_udp_listener_asks_for_a_large_receive_buffer(make_harness: HarnessFactory) -> None:
    rmem_max = _rmem_max()
    if rmem_max is None:
        pytest.skip("needs Linux's net.core.rmem_max")
    allowed = min(UDP_RECEIVE_BUFFER, rmem_max)
    harness = make_harness()
    await harness.manager.listen("udp", "127.0.0.1", 0)
    (_, listener), *_ = harness.manager._udp
    assert listener._transport is not None
    sock = listener._transport.get_extra_info("socket")
    # Linux reports twice the size asked for (bookkeeping overhead included).
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= allowed


@pytest.mark.asyncio
@pytest.mark.skipif(sys.platform != "linux", reason="SO_MEMINFO is Linux's")
async def test_udp_backlog_counts_datagrams_not_yet_read(listen_udp: ListenUdp) -> None:
    harness, _, peer, target = await listen_udp()
    waiting, size = harness.manager.udp_backlog()
    assert waiting == 0
    # The queue's limit is the socket's receive buffer (the kernel doubles what was asked).
    [(_, listener)] = harness.manager._udp
    sock = listener._transport.get_extra_info("socket")  # type: ignore[union-attr]
    assert size == sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
    requests = [sip_request(via=f"SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-q{n}") for n in range(20)]
    for request in requests:
        peer.send(request, target)  # on loopback the datagram is queued before send returns
    # Nothing was read yet (no await since): the kernel holds all twenty.
    assert harness.manager.udp_backlog()[0] >= sum(len(r) for r in requests)
    for _ in requests:
        await harness.recorder.request()
    assert harness.manager.udp_backlog() == (0, size)
