"""Fixtures for transport tests: both event loops, recording managers, UDP peers, a PKI."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest
import pytest_asyncio
import uvloop

from sipushd.transport import TransportLimits, TransportManager
from tests.transport.helpers import Harness, Pki, Recorder, UdpPeer, close_writer, make_pki


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Run every transport test on the stdlib loop and on uvloop (the daemon's loop)."""
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


HarnessFactory = Callable[..., Harness]


@pytest_asyncio.fixture
async def make_harness() -> AsyncIterator[HarnessFactory]:
    """Build TransportManagers wired to Recorders; all are closed after the test."""
    made: list[TransportManager] = []

    def factory(limits: TransportLimits | None = None, **kwargs: Any) -> Harness:
        recorder = Recorder()
        manager = TransportManager(
            recorder.on_message,
            limits=limits or TransportLimits(),
            on_flow_closed=recorder.on_flow_closed,
            on_parse_error=recorder.on_parse_error,
            **kwargs,
        )
        made.append(manager)
        return Harness(recorder, manager)

    yield factory
    for manager in made:
        await manager.close()


UdpPeerFactory = Callable[..., Awaitable[UdpPeer]]


@pytest_asyncio.fixture
async def udp_peer() -> AsyncIterator[UdpPeerFactory]:
    """Open UDP peers bound to loopback (IPv4 unless a host is given)."""
    peers: list[UdpPeer] = []

    async def factory(host: str = "127.0.0.1") -> UdpPeer:
        loop = asyncio.get_running_loop()
        _, peer = await loop.create_datagram_endpoint(UdpPeer, local_addr=(host, 0))
        peers.append(peer)
        return peer

    yield factory
    for peer in peers:
        if peer.transport is not None:
            peer.transport.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A self-signed CA and a server certificate for the loopback addresses."""
    return make_pki(tmp_path_factory.mktemp("pki"))


Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
ClientFactory = Callable[..., Awaitable[Streams]]


@pytest_asyncio.fixture
async def open_client() -> AsyncIterator[ClientFactory]:
    """Open TCP/TLS client connections that are closed after the test, even a failed one."""
    writers: list[asyncio.StreamWriter] = []

    async def factory(host: str, port: int, **kwargs: Any) -> Streams:
        reader, writer = await asyncio.open_connection(host, port, **kwargs)
        writers.append(writer)
        return reader, writer

    yield factory
    for writer in writers:
        await close_writer(writer)
