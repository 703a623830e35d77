"""aioapns, pointed at the mock, sends a VoIP push and reads a 410 like Apple's."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from aioapns import APNs, NotificationRequest, PushType
from aioapns.connection import APNsProductionClientProtocol
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sipushd.testing.mock_pns import MockPushService
from tests.testing.helpers import KEY_ID, TEAM_ID, TOKEN


@pytest.mark.asyncio
async def test_aioapns_round_trip(
    state_dir: Path,
    apns_key: tuple[ec.EllipticCurvePrivateKey, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key, public = apns_key
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    dead = "dd" * 32
    async with MockPushService(
        state_dir, rules=[f"token={dead}:410:Unregistered"], apns_public_keys=[public]
    ) as svc:
        # aioapns hard-codes Apple's host and port on its protocol class.
        monkeypatch.setattr(APNsProductionClientProtocol, "APNS_SERVER", "127.0.0.1")
        monkeypatch.setattr(APNsProductionClientProtocol, "APNS_PORT", svc.port)
        context = ssl.create_default_context(cafile=str(svc.ca_file))  # no ALPN, like aioapns
        client = APNs(
            key=pem,
            key_id=KEY_ID,
            team_id=TEAM_ID,
            topic="org.example.app.voip",
            ssl_context=context,
            max_connection_attempts=1,
        )
        try:
            ok = await client.send_notification(
                NotificationRequest(
                    device_token=TOKEN,
                    message={"aps": {}, "call_id": "c1"},
                    push_type=PushType.VOIP,
                    priority=10,
                    time_to_live=30,
                )
            )
            gone = await client.send_notification(
                NotificationRequest(device_token=dead, message={"aps": {}}, push_type=PushType.VOIP)
            )
        finally:
            client.pool.close()
    assert ok.is_successful, (ok.status, ok.description)
    assert (gone.status, gone.description) == ("410", "Unregistered")
    assert gone.timestamp is not None
    first = svc.pushes[0]
    assert (first.token, first.status, first.payload["call_id"]) == (TOKEN, 200, "c1")
    assert first.headers["apns-id"] == ok.notification_id
    assert first.headers["authorization"] == "bearer <redacted>"
