"""TransportManager API edges: argument checks, a failing upper layer, stats."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from sipushd.sip import Endpoint, Request, Response, parse_message
from sipushd.transport import TransportError, TransportManager
from tests.transport.conftest import HarnessFactory, UdpPeerFactory
from tests.transport.helpers import Pki, sip_request


@pytest.mark.asyncio
async def test_listen_checks_its_arguments(make_harness: HarnessFactory, pki: Pki) -> None:
    manager = make_harness().manager
    with pytest.raises(ValueError):
        await manager.listen("sctp", "127.0.0.1", 0)
    with pytest.raises(ValueError):
        await manager.listen("tls", "127.0.0.1", 0)
    with pytest.raises(ValueError):
        await manager.listen("tcp", "127.0.0.1", 0, pki.server_context())
    with pytest.raises(TransportError):
        manager.local_endpoint("tcp")
    bound = await manager.listen("TCP", "127.0.0.1", 0)
    assert manager.local_endpoint("tcp", socket.AF_INET) == bound
    assert manager.listeners() == [bound]
    with pytest.raises(TransportError):
        manager.send(parse_message(sip_request()), Endpoint("sctp", "127.0.0.1", 5060))


@pytest.mark.asyncio
async def test_a_raising_upper_layer_does_not_break_the_listener(
    udp_peer: UdpPeerFactory,
) -> None:
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    delivered: asyncio.Queue[Request | Response] = asyncio.Queue()

    def on_message(message: Request | Response, source: Endpoint) -> None:
        delivered.put_nowait(message)
        if isinstance(message, Request) and message.call_id == "boom":
            raise RuntimeError("upper layer bug")

    manager = TransportManager(on_message)
    try:
        bound = await manager.listen("udp", "127.0.0.1", 0)
        peer = await udp_peer()
        peer.send(sip_request(call_id="boom"), ("127.0.0.1", bound.port))
        peer.send(sip_request(call_id="fine"), ("127.0.0.1", bound.port))
        first = await asyncio.wait_for(delivered.get(), 5)
        second = await asyncio.wait_for(delivered.get(), 5)
        assert isinstance(first, Request) and isinstance(second, Request)
        assert (first.call_id, second.call_id) == ("boom", "fine")
        assert len(reported) == 1
        assert isinstance(reported[0]["exception"], RuntimeError)
    finally:
        await manager.close()
        loop.set_exception_handler(None)


@pytest.mark.asyncio
async def test_close_is_idempotent_and_final(make_harness: HarnessFactory) -> None:
    manager = make_harness().manager
    await manager.listen("udp", "127.0.0.1", 0)
    await manager.close()
    await manager.close()
    with pytest.raises(TransportError):
        await manager.listen("udp", "127.0.0.1", 0)
    with pytest.raises(TransportError):
        manager.send(parse_message(sip_request()), Endpoint("udp", "127.0.0.1", 5060))
