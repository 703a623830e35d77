"""Helpers for the mock push service tests: provider tokens, headers, a bare h2 client."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from sipushd.testing.mock_pns import MockPushService

TOKEN = "ab" * 32
TEAM_ID = "TEAM123456"
KEY_ID = "KEY1234567"


def provider_token(key: ec.EllipticCurvePrivateKey, iat: float | None = None) -> str:
    """An APNs provider token as aioapns builds it."""
    claims = {"iss": TEAM_ID, "iat": int(time.time() if iat is None else iat)}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": KEY_ID})


def apns_headers(**overrides: str | None) -> dict[str, str]:
    """A valid voip push's headers; a None override removes that header."""
    headers: dict[str, str | None] = {
        "apns-topic": "org.example.app.voip",
        "apns-push-type": "voip",
        "apns-priority": "10",
        "apns-expiration": "0",
    }
    headers.update({name.replace("_", "-"): value for name, value in overrides.items()})
    return {name: value for name, value in headers.items() if value is not None}


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    data_frames: list[bytes]
    headers_ended_stream: bool
    alpn: str | None


async def raw_h2_request(
    service: MockPushService,
    path: str,
    headers: Sequence[tuple[str, str]],
    body: bytes,
    method: str = "POST",
) -> RawAnswer:
    """One request with a bare h2 client over TLS that offers no ALPN, as aioapns does."""
    context = ssl.create_default_context(cafile=str(service.ca_file))
    reader, writer = await asyncio.open_connection("127.0.0.1", service.port, ssl=context)
    alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    conn = h2.connection.H2Connection(config=config)
    conn.initiate_connection()
    pseudo = [(":method", method), (":scheme", "https"), (":path", path)]
    conn.send_headers(1, [*pseudo, (":authority", "127.0.0.1"), *headers])
    conn.send_data(1, body, end_stream=True)
    writer.write(conn.data_to_send())
    answer = RawAnswer(0, {}, [], False, alpn)
    try:
        while True:
            data = await reader.read(65536)
            assert data, "connection closed before the answer ended"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    answer.headers = dict(event.headers)  # type: ignore[arg-type]
                    answer.status = int(answer.headers[":status"])
                    answer.headers_ended_stream = event.stream_ended is not None
                elif isinstance(event, h2.events.DataReceived):
                    answer.data_frames.append(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamEnded):
                    return answer
            writer.write(conn.data_to_send())
    finally:
        writer.close()
        await writer.wait_closed()


def h2_client(service: MockPushService) -> httpx.AsyncClient:
    """An HTTP/2 client trusting only the service's CA, with its base URL."""
    return httpx.AsyncClient(
        http2=True,
        verify=service.client_ssl_context(),
        trust_env=False,
        base_url=service.base_url,
    )
