"""The HTTP/2 transport under FCM and httpx, against the mock push service over real TLS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import h2.errors
import httpx
import pytest

from sipushd.push.fcm import FcmProvider
from sipushd.push.h2connection import Connection as _Connection
from sipushd.push.h2transport import H2Transport
from sipushd.push.tls import client_context
from sipushd.testing.mock_pns import MockPushService
from sipushd.testing.net import free_port
from tests.push.helpers import PROJECT

SEND = f"/v1/projects/{PROJECT}/messages:send"


def message(token: str = "fcm-token-1", **data: str) -> dict[str, Any]:
    return {"message": {"token": token, "data": data, "android": {"priority": "high"}}}


def post(url: str, access_token: str, body: dict[str, Any], timeout: float = 10.0) -> httpx.Request:
    """A push as the FCM provider builds it."""
    return httpx.Request(
        "POST",
        url,
        headers=[(b"authorization", f"Bearer {access_token}".encode())],
        content=json.dumps(body).encode(),
        extensions={"timeout": httpx.Timeout(timeout).as_dict()},
    )


async def send(
    transport: H2Transport,
    url: str,
    access_token: str = "",
    body: dict[str, Any] | None = None,
    timeout: float = 10.0,
) -> httpx.Response:
    """One request straight to the transport; the body read."""
    request = post(url, access_token, body or message(), timeout)
    response = await transport.handle_async_request(request)
    await response.aread()
    return response


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate`` holds (a few seconds at most)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def connection(transport: H2Transport, pns: MockPushService) -> _Connection:
    conn = transport.connection("127.0.0.1", pns.port)
    assert conn is not None
    return conn


async def fcm_parts(fcm: FcmProvider, pns: MockPushService) -> tuple[H2Transport, str, str]:
    """The provider's push transport, a valid access token and the messages:send URL."""
    app = fcm._apps[PROJECT]
    return app.push_transport, await app.tokens.token(), pns.base_url + SEND


def server_streams(pns: MockPushService) -> list[tuple[Any, int]]:
    """(server connection, stream id) of every request the mock is still answering."""
    assert pns._server is not None
    return [(conn, sid) for conn in pns._server._connections for sid in conn._tasks]


@pytest.mark.asyncio
async def test_pushes_share_one_connection_few_sends_and_one_token_encoding(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    first = await send(transport, url, access_token)
    assert (first.status_code, first.extensions["http_version"]) == (200, b"HTTP/2")
    assert first.json()["name"].startswith(f"projects/{PROJECT}/messages/")
    conn = connection(transport, pns)
    sends, hits = conn.sends, conn.huffman.hits
    answers = await asyncio.gather(
        *(send(transport, url, access_token, message(f"fcm-token-{i}")) for i in range(50))
    )
    assert [answer.status_code for answer in answers] == [200] * 50
    assert connection(transport, pns) is conn
    assert len({answer.extensions["stream_id"] for answer in answers}) == 50
    # Each push is HEADERS + DATA; corked, the 50 pushes share a few writes.
    assert conn.sends - sends < 25
    # The never-indexed authorization value is Huffman-coded once, then reused; the
    # mock decoded it to the right token every time (else it answers 401).
    assert conn.huffman.hits - hits == 50
    assert sorted(push.token for push in pns.pushes[1:]) == sorted(
        f"fcm-token-{i}" for i in range(50)
    )
    assert all(push.status == 200 for push in pns.pushes)  # the mock checked each token


@pytest.mark.asyncio
async def test_post_without_httpx_objects_and_h2_keeps_no_ended_stream(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    headers = [(b"authorization", f"Bearer {access_token}".encode())]
    answers = await asyncio.gather(
        *(
            transport.post(
                httpx.URL(url),
                headers,
                json.dumps(message(f"fcm-token-{i}")).encode(),
                httpx.Timeout(10.0).as_dict(),
            )
            for i in range(30)
        )
    )
    assert [answer.status for answer in answers] == [200] * 30
    assert all(json.loads(a.body)["name"].startswith(f"projects/{PROJECT}/") for a in answers)
    assert answers[0].header(b"content-type") == "application/json"
    assert answers[0].header(b"retry-after") is None
    assert sorted(push.token for push in pns.pushes) == sorted(f"fcm-token-{i}" for i in range(30))
    # Every ended stream left h2's table at once: its count of open streams stays exact.
    conn = connection(transport, pns)
    assert not conn.streams
    assert not conn.h2.streams
    assert conn.h2.open_outbound_streams == 0


@pytest.mark.asyncio
async def test_httpx_client_api_on_the_transport(pns: MockPushService) -> None:
    transport = H2Transport(client_context(pns.ca_file))
    async with httpx.AsyncClient(transport=transport) as client:
        answer = await client.put(pns.base_url + "/rules", json={"rules": []})
        listed = await client.get(pns.base_url + "/pushes", params={"provider": "fcm"})
    assert answer.http_version == "HTTP/2"
    assert listed.status_code == 200
    assert listed.json()["pushes"] == []


@pytest.mark.asyncio
async def test_large_bodies_flow_both_ways_under_flow_control(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    big = message(blob="x" * 300_000)  # > the 65,535-byte initial window (RFC 9113 §6.9.2)
    answer = await send(transport, url, access_token, big)
    assert answer.status_code == 200
    assert pns.pushes[-1].payload == big
    # The recorded pushes come back as one ~300 KB answer: DATA acknowledged as it arrives.
    request = httpx.Request("GET", pns.base_url + "/pushes")
    listed = await transport.handle_async_request(request)
    assert listed.status_code == 200
    assert json.loads(await listed.aread())["pushes"][-1]["payload"] == big


@pytest.mark.asyncio
async def test_streams_stay_within_the_servers_limit(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    assert pns._server is not None
    pns._server.max_streams = 3  # announced in the SETTINGS of connections made from now
    transport, access_token, url = await fcm_parts(fcm, pns)
    pns.set_rules(["delay=0.2"])
    pending = [
        asyncio.ensure_future(send(transport, url, access_token, message(f"t{i}")))
        for i in range(10)
    ]
    most = 0
    while not all(task.done() for task in pending):
        conn = transport.connection("127.0.0.1", pns.port)
        most = max(most, len(conn.streams) if conn is not None else 0)
        await asyncio.sleep(0)
    assert [task.result().status_code for task in pending] == [200] * 10
    assert most == 3  # h2 would refuse a fourth; the server would close the connection
    assert len(pns.pushes) == 10  # none refused, none sent twice


@pytest.mark.asyncio
async def test_reset_stream_fails_that_request_only(fcm: FcmProvider, pns: MockPushService) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    await send(transport, url, access_token)
    conn = connection(transport, pns)
    pns.set_rules(["delay=5:first=1"])
    pending = asyncio.ensure_future(send(transport, url, access_token))
    await wait_until(lambda: bool(server_streams(pns)))
    [(server, stream_id)] = server_streams(pns)
    server._h2.reset_stream(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
    server._flush()
    with pytest.raises(httpx.RemoteProtocolError, match="stream reset"):
        await pending
    assert (await send(transport, url, access_token)).status_code == 200
    assert connection(transport, pns) is conn


@pytest.mark.asyncio
async def test_refused_stream_is_sent_again(fcm: FcmProvider, pns: MockPushService) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    await send(transport, url, access_token)
    pns.set_rules(["delay=5:first=1"])
    pending = asyncio.ensure_future(send(transport, url, access_token, message("refused")))
    await wait_until(lambda: bool(server_streams(pns)))
    [(server, stream_id)] = server_streams(pns)
    server._h2.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
    server._flush()
    answer = await pending  # RFC 9113 §8.7: not processed, so safe to send again
    assert answer.status_code == 200
    assert [push.token for push in pns.pushes[1:]] == ["refused", "refused"]


@pytest.mark.asyncio
async def test_goaway_sends_unprocessed_streams_again_on_a_new_connection(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    await send(transport, url, access_token)
    old = connection(transport, pns)
    pns.set_rules(["delay=5:first=2"])
    first = asyncio.ensure_future(send(transport, url, access_token, message("first")))
    await wait_until(lambda: len(server_streams(pns)) == 1)
    second = asyncio.ensure_future(send(transport, url, access_token, message("second")))
    await wait_until(lambda: len(server_streams(pns)) == 2)
    server, first_id = server_streams(pns)[0]
    server._h2.close_connection(last_stream_id=first_id)  # the second was not processed
    server._flush()
    with pytest.raises(httpx.RemoteProtocolError, match="GOAWAY"):
        await first  # processed, maybe: the caller decides (FCM: a retryable error)
    assert (await second).status_code == 200
    new = connection(transport, pns)
    assert new is not old and not old.usable
    assert (await send(transport, url, access_token)).status_code == 200
    assert connection(transport, pns) is new


@pytest.mark.asyncio
async def test_lost_connection_fails_requests_then_a_new_one_is_made(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    await send(transport, url, access_token)
    old = connection(transport, pns)
    pns.set_rules(["delay=5:first=1"])
    pending = asyncio.ensure_future(send(transport, url, access_token))
    await wait_until(lambda: bool(server_streams(pns)))
    [(server, _)] = server_streams(pns)
    assert server._transport is not None
    server._transport.abort()  # no GOAWAY: the socket just goes
    with pytest.raises(httpx.ReadError):
        await pending
    assert (await send(transport, url, access_token)).status_code == 200
    assert connection(transport, pns) is not old


@pytest.mark.asyncio
async def test_stopped_service_is_a_transport_error_for_fcm(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    pns.set_rules(["delay=5"])
    pending = asyncio.ensure_future(send(transport, url, access_token))
    await pns.wait_for_push()
    await pns.stop()  # GOAWAY, then the socket closes
    with pytest.raises(httpx.TransportError):
        await pending
    with pytest.raises(httpx.ConnectError):
        await send(transport, url, access_token)


@pytest.mark.asyncio
async def test_late_answer_is_a_read_timeout_and_resets_the_stream(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    pns.set_rules(["delay=5:first=1"])
    with pytest.raises(httpx.ReadTimeout):
        await send(transport, url, access_token, timeout=0.2)
    conn = connection(transport, pns)
    assert not conn.streams
    await wait_until(lambda: not server_streams(pns))  # RST_STREAM CANCEL reached the mock
    assert (await send(transport, url, access_token)).status_code == 200
    assert connection(transport, pns) is conn


@pytest.mark.asyncio
async def test_cancelled_request_resets_its_stream(fcm: FcmProvider, pns: MockPushService) -> None:
    transport, access_token, url = await fcm_parts(fcm, pns)
    pns.set_rules(["delay=5:first=1"])
    pending = asyncio.ensure_future(send(transport, url, access_token))
    await wait_until(lambda: bool(server_streams(pns)))
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    await wait_until(lambda: not server_streams(pns))
    assert not connection(transport, pns).streams
    assert (await send(transport, url, access_token)).status_code == 200


@pytest.mark.asyncio
async def test_connect_failures_are_connect_errors(pns: MockPushService) -> None:
    transport = H2Transport(client_context(pns.ca_file))
    with pytest.raises(httpx.ConnectError):
        await send(transport, f"https://127.0.0.1:{free_port()}/")
    untrusting = H2Transport(client_context(None))
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        await send(untrusting, pns.base_url + SEND)
    with pytest.raises(httpx.UnsupportedProtocol):
        await send(transport, f"http://127.0.0.1:{pns.port}/")
    await transport.aclose()
    await untrusting.aclose()


@pytest.mark.asyncio
async def test_closing_the_transport_closes_its_sockets_at_once(pns: MockPushService) -> None:
    transport = H2Transport(client_context(pns.ca_file))
    answer = await transport.handle_async_request(httpx.Request("GET", pns.base_url + "/pushes"))
    assert answer.status_code == 200
    conn = connection(transport, pns)
    assert conn.transport is not None
    sock = conn.transport.get_extra_info("socket")
    assert sock.fileno() >= 0
    await transport.aclose()
    for _ in range(3):
        await asyncio.sleep(0)
    assert sock.fileno() == -1
    with pytest.raises(httpx.ConnectError):
        await transport.handle_async_request(httpx.Request("GET", pns.base_url + "/pushes"))
