"""The daemon on real loopback sockets: OPTIONS, request validation, retransmissions."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sipushd import metrics
from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.sip import Response, StreamParser
from sipushd.testing.pki import ensure_server_credentials
from sipushd.testing.ua import SipClient


def _config(tmp_path: Path) -> Config:
    return Config.model_validate(
        {
            "sip": {
                "domains": ["example.org"],
                "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"],
            },
            "storage": {"sqlite": {"path": str(tmp_path / "db.sqlite")}},
        }
    )


@pytest_asyncio.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[Daemon]:
    running = Daemon(_config(tmp_path))
    await running.start()
    yield running
    await running.stop(0)


def _address(daemon: Daemon, transport: str) -> tuple[str, int]:
    endpoint = next(e for e in daemon.listeners if e.transport == transport)
    return endpoint.host, endpoint.port


@pytest.mark.asyncio
@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_options_to_the_server_gets_200_with_capabilities(
    daemon: Daemon, transport: str
) -> None:
    async with await SipClient.connect(transport, _address(daemon, transport)) as ua:
        response = await ua.request("OPTIONS", "sip:127.0.0.1")
    assert response.status == 200
    allow = {m.strip() for m in (response.headers.get("Allow") or "").split(",")}
    assert {"OPTIONS", "ACK", "CANCEL"} <= allow
    assert "path" in (response.headers.get("Supported") or "")
    assert response.to.tag, "a UAS answer carries a To tag (§8.2.6.2)"


@pytest.mark.asyncio
async def test_udp_retransmission_gets_the_same_response(daemon: Daemon) -> None:
    async with await SipClient.connect("udp", _address(daemon, "udp")) as ua:
        request = ua.build("OPTIONS", "sip:127.0.0.1")
        ua.send(request)
        first = await ua.final_response()
        ua.send(request)  # §17.2.2: the server transaction absorbs it and resends
        second = await ua.final_response()
    assert first == second


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "uri", "headers", "status"),
    [
        ("FOOBAR", "sip:127.0.0.1", [], 501),
        ("SUBSCRIBE", "sip:127.0.0.1", [], 405),
        ("OPTIONS", "tel:+15551234", [], 416),
        ("OPTIONS", "sip:127.0.0.1", [("Require", "100rel")], 420),
        ("OPTIONS", "sip:127.0.0.1", [("Proxy-Require", "foo")], 420),
        ("SUBSCRIBE", "sip:127.0.0.1", [("Max-Forwards", "0")], 483),
    ],
)
async def test_requests_it_cannot_serve_get_the_rfc_status(
    daemon: Daemon, method: str, uri: str, headers: list[tuple[str, str]], status: int
) -> None:
    async with await SipClient.connect("udp", _address(daemon, "udp")) as ua:
        request = ua.build(method, uri, headers)
        if any(name == "Max-Forwards" for name, _ in headers):
            request = request.replace(headers=request.headers.set("Max-Forwards", "0"))
        ua.send(request)
        response = await ua.final_response()
    assert response.status == status
    if status == 420:
        assert response.headers.get("Unsupported") in {"100rel", "foo"}
    if status in (405, 501):
        assert "OPTIONS" in (response.headers.get("Allow") or "")


@pytest.mark.asyncio
async def test_malformed_datagram_with_readable_head_gets_400(daemon: Daemon) -> None:
    async with await SipClient.connect("udp", _address(daemon, "udp")) as ua:
        good = ua.build("OPTIONS", "sip:127.0.0.1").to_bytes().decode()
        broken = good.replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE")  # §8.2: method mismatch
        ua.send(broken.encode())
        response = await ua.final_response()
    assert isinstance(response, Response)
    assert response.status == 400


@pytest.mark.asyncio
async def test_stream_parse_error_gets_400_then_the_connection_closes(daemon: Daemon) -> None:
    async with await SipClient.connect("tcp", _address(daemon, "tcp")) as ua:
        good = ua.build("OPTIONS", "sip:127.0.0.1").to_bytes().decode()
        ua.send(good.replace("SIP/2.0\r\n", "SIP/3.0\r\n", 1).encode())
        response = await ua.final_response()
        await asyncio.wait_for(ua.closed.wait(), 5)
    assert response.status == 505


@pytest.mark.asyncio
async def test_options_over_tls_listener(tmp_path: Path) -> None:
    creds = ensure_server_credentials(tmp_path / "pki")
    config = Config.model_validate(
        {
            "sip": {
                "domains": ["example.org"],
                "listen": ["tls:127.0.0.1:0"],
                "tls": {"cert_file": str(creds.cert_file), "key_file": str(creds.key_file)},
            },
            "storage": {"sqlite": {"path": ":memory:"}},
        }
    )
    running = Daemon(config)
    await running.start()
    try:
        host, port = _address(running, "tls")
        context = ssl.create_default_context(cafile=str(creds.ca_file))
        reader, writer = await asyncio.open_connection(host, port, ssl=context)
        local_host, local_port = writer.get_extra_info("sockname")[:2]
        request = (
            f"OPTIONS sip:{host}:{port};transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {local_host}:{local_port};branch=z9hG4bKtls1;rport\r\n"
            "Max-Forwards: 70\r\nFrom: <sip:ua@example.org>;tag=t1\r\n"
            f"To: <sip:{host}>\r\nCall-ID: tls-options\r\nCSeq: 1 OPTIONS\r\n"
            "Content-Length: 0\r\n\r\n"
        )
        writer.write(request.encode())
        parser = StreamParser()
        messages: list[object] = []
        while not messages:
            messages = list(parser.feed(await asyncio.wait_for(reader.read(65536), 5)))
        writer.close()
    finally:
        await running.stop(0)
    response = messages[0]
    assert isinstance(response, Response)
    assert response.status == 200
    assert response.call_id == "tls-options"


def _sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.asyncio
async def test_transactions_and_parse_errors_are_counted(daemon: Daemon) -> None:
    created = _sample("sipushd_transactions_total", kind="non_invite_server")
    errors = _sample("sipushd_parse_errors_total", transport="udp")
    async with await SipClient.connect("udp", _address(daemon, "udp")) as ua:
        assert (await ua.request("OPTIONS", "sip:127.0.0.1")).status == 200
        ua.send(b"OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: broken\r\n\r\n")
        # A second request after the bad datagram proves the bad one was processed.
        assert (await ua.request("OPTIONS", "sip:127.0.0.1")).status == 200
    assert _sample("sipushd_transactions_total", kind="non_invite_server") == created + 2
    assert _sample("sipushd_parse_errors_total", transport="udp") == errors + 1


@pytest.mark.asyncio
async def test_live_transactions_gauge_follows_timer_j(tmp_path: Path) -> None:
    # T1 = 20 ms: a UDP non-INVITE server transaction lives on 64*T1 = 1.28 s (§17.2.2).
    raw = _config(tmp_path).model_dump(mode="json", exclude_unset=True)
    raw["sip"]["timers"] = {"t1": 0.02}
    raw["routing"] = {"message_accept_timeout": 1.0}  # must stay below Timer F (64*T1)
    running = Daemon(Config.model_validate(raw))
    await running.start()
    try:
        before = _sample("sipushd_transactions_active", kind="non_invite_server")
        async with await SipClient.connect("udp", _address(running, "udp")) as ua:
            assert (await ua.request("OPTIONS", "sip:127.0.0.1")).status == 200
        assert _sample("sipushd_transactions_active", kind="non_invite_server") == before + 1
        for _ in range(200):  # Timer J fires after 1.28 s; give it up to 10 s
            if _sample("sipushd_transactions_active", kind="non_invite_server") == before:
                break
            await asyncio.sleep(0.05)
        assert _sample("sipushd_transactions_active", kind="non_invite_server") == before
        assert len(running.engine.layer) == 0
    finally:
        await running.stop(0)
