"""The asyncio network backend under httpx, against the mock push service over real TLS."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from sipushd.push.fcm import FcmProvider
from sipushd.push.netbackend import AsyncioHTTPTransport, AsyncioStream
from sipushd.push.tls import client_context
from sipushd.testing.mock_pns import MockPushService
from sipushd.testing.net import free_port
from tests.push.helpers import PROJECT

SEND = f"/v1/projects/{PROJECT}/messages:send"


def message(token: str = "fcm-token-1", **data: str) -> dict[str, Any]:
    return {"message": {"token": token, "data": data, "android": {"priority": "high"}}}


async def send(
    transport: httpx.AsyncBaseTransport,
    url: str,
    access_token: str = "",
    body: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """One request straight to the transport, as the FCM provider sends it; body read."""
    headers = [(b"authorization", f"Bearer {access_token}".encode())] if access_token else []
    content = json.dumps(body).encode() if body is not None else None
    request = httpx.Request(
        "POST" if body is not None else "GET",
        url,
        headers=headers,
        content=content,
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


@pytest.mark.asyncio
async def test_concurrent_http2_requests_share_one_pooled_connection_and_few_sends(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    """httpx's pool on this backend: concurrent HTTP/2 requests share one connection and sends.

    The transport is the FCM token client's. The requests are ``messages:send`` POSTs only
    because the mock answers them on the same port; FCM's pushes themselves go through
    ``H2Transport`` (tests/push/h2transport).
    """
    app = fcm._apps[PROJECT]
    assert isinstance(app.transport, AsyncioHTTPTransport)
    access_token = await app.tokens.token()
    url = pns.base_url + SEND
    first = await send(app.transport, url, access_token, message())
    assert (first.status_code, first.extensions["http_version"]) == (200, b"HTTP/2")
    stream = first.extensions["network_stream"]
    assert isinstance(stream, AsyncioStream)  # httpx really pools on this backend
    before = stream.sends
    answers = await asyncio.gather(
        *(send(app.transport, url, access_token, message(f"fcm-token-{i}")) for i in range(50))
    )
    assert [answer.status_code for answer in answers] == [200] * 50
    assert all(answer.extensions["network_stream"] is stream for answer in answers)
    # Each request writes HEADERS, DATA and an END_STREAM frame (150 writes); uncorked,
    # every one of them was its own send() (112 here). Corked, the requests share sends.
    assert stream.sends - before < 60
    assert sorted(push.token for push in pns.pushes[1:]) == sorted(
        f"fcm-token-{i}" for i in range(50)
    )


@pytest.mark.asyncio
async def test_large_body_flows_through_http2_flow_control(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    app = fcm._apps[PROJECT]
    access_token = await app.tokens.token()
    big = message(blob="x" * 300_000)  # > the 65,535-byte initial window (RFC 9113 §6.9.2)
    answer = await send(app.transport, pns.base_url + SEND, access_token, big)
    assert answer.status_code == 200
    assert pns.pushes[-1].payload == big


@pytest.mark.asyncio
async def test_http11_answers_and_closed_connections_are_replaced(pns: MockPushService) -> None:
    # The mock answers HTTP/1.1 (the token endpoint's fallback) once per connection.
    async with AsyncioHTTPTransport(client_context(pns.ca_file, alpn=()), http2=False) as transport:
        for _ in range(2):
            answer = await send(transport, pns.base_url + "/token", body={})
            assert answer.extensions["http_version"] == b"HTTP/1.1"
            assert answer.status_code == 400
            assert answer.json()["error"] == "unsupported_grant_type"


@pytest.mark.asyncio
async def test_late_answer_is_a_read_timeout(fcm: FcmProvider, pns: MockPushService) -> None:
    app = fcm._apps[PROJECT]
    access_token = await app.tokens.token()
    pns.set_rules(["delay=2"])
    with pytest.raises(httpx.ReadTimeout):
        await send(app.transport, pns.base_url + SEND, access_token, message(), timeout=0.2)
    pns.set_rules([])
    answer = await send(app.transport, pns.base_url + SEND, access_token, message())
    assert answer.status_code == 200  # the connection still serves other streams


@pytest.mark.asyncio
async def test_connection_lost_mid_request_is_a_transport_error(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    app = fcm._apps[PROJECT]
    access_token = await app.tokens.token()
    pns.set_rules(["delay=5"])
    request = send(app.transport, pns.base_url + SEND, access_token, message())
    pending = asyncio.ensure_future(request)
    await pns.wait_for_push()  # the request is in, its answer held back
    await pns.stop()
    with pytest.raises(httpx.TransportError):
        await pending


@pytest.mark.asyncio
async def test_connect_failures_are_connect_errors(pns: MockPushService) -> None:
    refused = f"https://127.0.0.1:{free_port()}/"
    async with AsyncioHTTPTransport(client_context(pns.ca_file, alpn=())) as transport:
        with pytest.raises(httpx.ConnectError):
            await send(transport, refused)
    async with AsyncioHTTPTransport(client_context(None, alpn=())) as untrusting:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await send(untrusting, pns.base_url + "/token")


@pytest.mark.asyncio
async def test_closing_the_transport_closes_its_sockets_at_once(pns: MockPushService) -> None:
    # Without waiting for the peer's TLS close_notify: a one-shot `push-test` closes its
    # loop right after, and a socket still open then is leaked.
    transport = AsyncioHTTPTransport(client_context(pns.ca_file, alpn=()))
    answer = await send(transport, pns.base_url + "/token", body={})
    sock = answer.extensions["network_stream"].get_extra_info("socket")
    assert sock.fileno() >= 0
    await transport.aclose()
    for _ in range(3):
        await asyncio.sleep(0)
    assert sock.fileno() == -1
