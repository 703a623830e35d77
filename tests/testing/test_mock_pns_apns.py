"""The mock's APNs side over real TLS + HTTP/2: framing, header checks, provider tokens."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from sipushd.testing.mock_pns import MockPushService
from tests.testing.helpers import TOKEN, apns_headers, h2_client, provider_token, raw_h2_request

VOIP = json.dumps({"aps": {}, "call_id": "c1"}).encode()


@pytest.mark.asyncio
async def test_push_without_alpn_is_accepted_and_answered_like_apple(
    service: MockPushService, apns_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    apns_id = str(uuid.uuid4())
    headers = [*apns_headers(apns_id=apns_id).items()]
    headers.append(("authorization", f"bearer {provider_token(apns_key[0])}"))
    answer = await raw_h2_request(service, f"/3/device/{TOKEN}", headers, VOIP)
    assert answer.alpn is None
    assert answer.status == 200
    assert answer.headers["apns-id"] == apns_id
    # Apple ends a 200 with its HEADERS frame: no DATA frame, not even an empty one.
    assert answer.headers_ended_stream
    assert answer.data_frames == []
    push = await service.wait_for_push()
    assert (push.provider, push.token, push.status) == ("apns", TOKEN, 200)
    assert push.payload == {"aps": {}, "call_id": "c1"}
    assert push.headers["apns-push-type"] == "voip"
    assert push.headers["apns-topic"] == "org.example.app.voip"
    assert push.headers["authorization"] == "bearer <redacted>"
    assert push.push_type == "voip"


@pytest.mark.asyncio
async def test_error_without_apns_id_gets_a_fresh_one_and_a_json_reason(
    service: MockPushService,
) -> None:
    answer = await raw_h2_request(service, "/3/device/not-hex", [*apns_headers().items()], VOIP)
    assert answer.status == 400
    assert uuid.UUID(answer.headers["apns-id"])
    assert json.loads(b"".join(answer.data_frames)) == {"reason": "BadDeviceToken"}
    assert service.pushes[-1].reason == "BadDeviceToken"


BIG = json.dumps({"aps": {}, "pad": "x" * 4100}).encode()  # over 4096, under 5120
HEADER_CASES = [
    ({"apns_topic": None}, VOIP, 400, "MissingTopic"),
    ({"apns_push_type": "loud"}, VOIP, 400, "InvalidPushType"),
    ({"apns_topic": "org.example.app"}, VOIP, 400, "DeviceTokenNotForTopic"),
    ({"apns_priority": "7"}, VOIP, 400, "BadPriority"),
    (
        {"apns_push_type": "background", "apns_topic": "org.example.app"},
        VOIP,
        400,
        "BadPriority",
    ),
    ({"apns_expiration": "soon"}, VOIP, 400, "BadExpirationDate"),
    ({"apns_collapse_id": "c" * 65}, VOIP, 400, "BadCollapseId"),
    ({"apns_id": "not-a-uuid"}, VOIP, 400, "BadMessageId"),
    ({}, b"", 400, "PayloadEmpty"),
    ({}, b"{not json", 400, "BadPayload"),
    ({"apns_push_type": "alert", "apns_topic": "org.example.app"}, BIG, 413, "PayloadTooLarge"),
    ({}, BIG, 200, None),  # VoIP payloads may reach 5120 bytes
    ({}, json.dumps({"aps": {}, "pad": "x" * 5200}).encode(), 413, "PayloadTooLarge"),
    ({"apns_push_type": "background", "apns_topic": "a.b", "apns_priority": "5"}, VOIP, 200, None),
    ({"apns_collapse_id": "c" * 64, "apns_expiration": "1700000000"}, VOIP, 200, None),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("overrides", "body", "status", "reason"), HEADER_CASES)
async def test_header_and_payload_checks(
    service: MockPushService,
    client: httpx.AsyncClient,
    overrides: dict[str, str | None],
    body: bytes,
    status: int,
    reason: str | None,
) -> None:
    response = await client.post(
        f"/3/device/{TOKEN}", headers=apns_headers(**overrides), content=body
    )
    assert response.http_version == "HTTP/2"
    assert response.status_code == status
    assert response.headers["apns-id"]
    if reason is None:
        assert response.content == b""
    else:
        assert response.json() == {"reason": reason}
    assert service.pushes[-1].status == status


@pytest.mark.asyncio
async def test_provider_token_signature_and_age(
    tmp_path: Path, state_dir: Path, apns_key: tuple[ec.EllipticCurvePrivateKey, Path]
) -> None:
    key, public = apns_key
    other = ec.generate_private_key(ec.SECP256R1())
    svc = MockPushService(state_dir, apns_public_keys=[public])
    async with svc, h2_client(svc) as client:

        async def send(authorization: str | None) -> tuple[int, str | None]:
            headers = apns_headers(authorization=authorization)
            url = f"/3/device/{TOKEN}"
            response = await client.post(url, headers=headers, content=VOIP)
            assert response.headers["apns-id"]
            return response.status_code, (response.json() if response.content else {}).get("reason")

        assert await send(f"bearer {provider_token(key)}") == (200, None)
        assert await send(f"bearer {provider_token(other)}") == (403, "InvalidProviderToken")
        old = provider_token(key, iat=time.time() - 2 * 3600)
        assert await send(f"bearer {old}") == (403, "ExpiredProviderToken")
        assert await send("bearer not.a.jwt") == (403, "InvalidProviderToken")
        assert await send(None) == (403, "MissingProviderToken")


@pytest.mark.asyncio
async def test_scripted_answers(state_dir: Path) -> None:
    rules = [
        f"token={'dd' * 32}:410",
        "provider=apns:500:InternalServerError:first=2",
    ]
    svc = MockPushService(state_dir, rules=rules)
    async with svc, h2_client(svc) as client:

        async def send(token: str) -> httpx.Response:
            url = f"/3/device/{token}"
            return await client.post(url, headers=apns_headers(), content=VOIP)

        dead = await send("dd" * 32)
        assert dead.status_code == 410
        assert dead.json()["reason"] == "Unregistered"
        assert dead.json()["timestamp"] == int(svc.pushes[-1].time * 1000)
        statuses = [(await send(TOKEN)).status_code for _ in range(3)]
        assert statuses == [500, 500, 200]
        svc.set_rules(["token=*:429:TooManyRequests:retry-after=1"])
        throttled = await send(TOKEN)
        assert throttled.status_code == 429
        assert throttled.headers["retry-after"] == "1"
        assert throttled.json() == {"reason": "TooManyRequests"}
        svc.set_rules(["delay=0.01"])
        assert (await send(TOKEN)).status_code == 200
