"""TLS on real loopback sockets with a test CA: listener with a real TLS client, outgoing
connections opened by send() (certificate checked) and reused."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sipushd.sip import Endpoint, Response, make_response, parse_message
from sipushd.transport import TransportLimits, response_destination
from tests.transport.conftest import ClientFactory, HarnessFactory
from tests.transport.helpers import (
    WAIT,
    Pki,
    close_writer,
    needs_ipv6,
    read_message,
    read_to_eof,
    sip_request,
)

TLS_VIA = "SIP/2.0/TLS 127.0.0.1:5071;rport;branch=z9hG4bK-s"


@pytest.mark.asyncio
async def test_tls_listener_with_a_real_tls_client(
    make_harness: HarnessFactory, open_client: ClientFactory, pki: Pki
) -> None:
    harness = make_harness()
    bound = await harness.manager.listen("tls", "127.0.0.1", 0, pki.server_context())
    assert bound.transport == "tls"
    reader, writer = await open_client(
        "127.0.0.1", bound.port, ssl=pki.client_context(), server_hostname="127.0.0.1"
    )
    writer.write(b"\r\n\r\n" + sip_request(via=TLS_VIA, call_id="tls-1"))
    assert await asyncio.wait_for(reader.readexactly(2), WAIT) == b"\r\n"
    message, source = await harness.recorder.request()
    assert message.call_id == "tls-1"
    assert source.transport == "tls" and source.flow is not None
    response = make_response(message, 200)
    harness.manager.send(response, response_destination(response, source))
    answer = parse_message(await read_message(reader))
    assert isinstance(answer, Response) and answer.status == 200
    assert harness.manager.stats().connections == {"tcp": 0, "tls": 1}
    await close_writer(writer)
    assert await harness.recorder.closed_flow() == source


@pytest.mark.asyncio
async def test_tls_listener_drops_a_plain_tcp_client(
    make_harness: HarnessFactory, open_client: ClientFactory, pki: Pki
) -> None:
    harness = make_harness()
    bound = await harness.manager.listen("tls", "127.0.0.1", 0, pki.server_context())
    reader, writer = await open_client("127.0.0.1", bound.port)
    writer.write(sip_request(via=TLS_VIA))
    assert await read_to_eof(reader) == b""
    assert harness.recorder.messages.empty()
    assert harness.manager.stats().connections["tls"] == 0
    await close_writer(writer)


@pytest.mark.asyncio
async def test_send_opens_a_verified_tls_connection_and_reuses_it(
    make_harness: HarnessFactory, pki: Pki
) -> None:
    # The remote peer is another TransportManager with a TLS listener.
    remote = make_harness()
    bound = await remote.manager.listen("tls", "127.0.0.1", 0, pki.server_context())
    local = make_harness(client_ssl_context=pki.client_context())
    destination = Endpoint("tls", "127.0.0.1", bound.port)
    request = parse_message(sip_request(via=TLS_VIA, call_id="out-tls"))
    used = local.manager.send(request, destination)
    assert used.transport == "tls" and used.flow is not None
    again = local.manager.send(request.replace(body=b"again"), destination)
    assert again == used
    first, source = await remote.recorder.request()
    second, source2 = await remote.recorder.request()
    assert (first.call_id, second.body) == ("out-tls", b"again")
    assert source == source2
    # The answer comes back over the connection that carried the request.
    response = make_response(first, 200)
    remote.manager.send(response, response_destination(response, source))
    answer, answer_source = await local.recorder.message()
    assert isinstance(answer, Response) and answer_source == used
    assert remote.manager.stats().connections["tls"] == 1


@pytest.mark.asyncio
async def test_tls_certificate_is_verified(make_harness: HarnessFactory, pki: Pki) -> None:
    remote = make_harness()
    bound = await remote.manager.listen("tls", "127.0.0.1", 0, pki.server_context())
    # The default client context does not trust the test CA: the connection must fail.
    local = make_harness(TransportLimits(connect_timeout=3.0))
    used = local.manager.send(
        parse_message(sip_request()), Endpoint("tls", "127.0.0.1", bound.port)
    )
    assert await local.recorder.closed_flow() == used
    assert local.manager.stats().connect_failures == 1
    assert remote.recorder.messages.empty()


@needs_ipv6
@pytest.mark.asyncio
async def test_tls_over_ipv6(make_harness: HarnessFactory, pki: Pki) -> None:
    remote = make_harness()
    bound = await remote.manager.listen("tls", "::1", 0, pki.server_context())
    assert remote.manager.local_endpoint("tls", socket.AF_INET6) == bound
    local = make_harness(client_ssl_context=pki.client_context())
    local.manager.send(
        parse_message(sip_request(call_id="v6-tls")), Endpoint("tls", "::1", bound.port)
    )
    message, source = await remote.recorder.request()
    assert message.call_id == "v6-tls" and source.host == "::1"
