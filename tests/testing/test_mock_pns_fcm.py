"""The mock's FCM v1 side: OAuth2 token endpoint, messages:send, Google-shaped errors."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from google.auth import crypt, jwt

from sipushd.testing.mock_pns import MockPushService, write_test_service_account

PROJECT = "mock-project"
FCM_TOKEN = "dXk3:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
SEND = f"/v1/projects/{PROJECT}/messages:send"


def assertion(account: dict[str, Any], **changes: Any) -> str:
    """The JWT a service account sends to its token_uri (RFC 7523), as google-auth signs it."""
    signer = crypt.RSASigner.from_service_account_info(account)
    now = int(time.time())
    claims = {
        "iss": account["client_email"],
        "scope": SCOPE,
        "aud": account["token_uri"],
        "iat": now,
        "exp": now + 3600,
        **changes,
    }
    encoded: bytes = jwt.encode(signer, claims)
    return encoded.decode()


@pytest_asyncio.fixture
async def account(service: MockPushService, tmp_path: Path) -> dict[str, Any]:
    path = write_test_service_account(tmp_path / "sa.json", service.token_uri, PROJECT)
    info: dict[str, Any] = json.loads(path.read_text())
    assert info["type"] == "service_account"
    assert info["token_uri"] == f"{service.base_url}/token"
    return info


@pytest_asyncio.fixture
async def access_token(client: httpx.AsyncClient, account: dict[str, Any]) -> AsyncIterator[str]:
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"}
    answer = await client.post("/token", data={**form, "assertion": assertion(account)})
    assert answer.status_code == 200
    body = answer.json()
    assert (body["expires_in"], body["token_type"]) == (3600, "Bearer")
    yield body["access_token"]


def message(**changes: Any) -> dict[str, Any]:
    body = {
        "token": FCM_TOKEN,
        "data": {"call_id": "c1", "from_uri": "sip:bob@example.org"},
        "android": {"priority": "high", "ttl": "30s"},
        **changes,
    }
    return {"message": body}


@pytest.mark.asyncio
async def test_send_with_issued_token_is_accepted_and_recorded(
    service: MockPushService, client: httpx.AsyncClient, access_token: str
) -> None:
    headers = {"authorization": f"Bearer {access_token}"}
    answer = await client.post(SEND, json=message(), headers=headers)
    assert answer.status_code == 200
    assert answer.json() == {"name": f"projects/{PROJECT}/messages/1"}
    push = await service.wait_for_push()
    assert (push.provider, push.token, push.status) == ("fcm", FCM_TOKEN, 200)
    assert push.payload == message()
    assert push.headers["authorization"] == "Bearer <redacted>"
    assert push.push_type == "data"


@pytest.mark.asyncio
@pytest.mark.parametrize("authorization", [None, "Bearer ya29.never-issued", "Basic abc"])
async def test_send_without_an_issued_token_is_unauthenticated(
    client: httpx.AsyncClient, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"authorization": authorization}
    answer = await client.post(SEND, json=message(), headers=headers)
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"


@pytest.mark.asyncio
async def test_token_endpoint_refuses_bad_grants(
    client: httpx.AsyncClient, account: dict[str, Any]
) -> None:
    grant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
    wrong_type = await client.post("/token", data={"grant_type": "password"})
    assert wrong_type.json()["error"] == "unsupported_grant_type"
    expired = assertion(account, iat=int(time.time()) - 7200, exp=int(time.time()) - 3600)
    answer = await client.post("/token", data={"grant_type": grant, "assertion": expired})
    assert (answer.status_code, answer.json()["error"]) == (400, "invalid_grant")
    junk = await client.post("/token", data={"grant_type": grant, "assertion": "junk"})
    assert junk.json()["error"] == "invalid_grant"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (message(data={"n": 1}), "message.data"),
        (message(token=""), "message.token"),
        (message(android={"ttl": "30"}), "message.android.ttl"),
        (message(android={"priority": "urgent"}), "message.android.priority"),
        (message(topic="news"), None),
        (message(colour="red"), None),
        ({"msg": {}}, None),
    ],
)
async def test_invalid_messages_get_invalid_argument(
    client: httpx.AsyncClient, access_token: str, body: dict[str, Any], field: str | None
) -> None:
    headers = {"authorization": f"Bearer {access_token}"}
    answer = await client.post(SEND, json=body, headers=headers)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    assert error["details"][0]["errorCode"] == "INVALID_ARGUMENT"
    violations = [d for d in error["details"] if "fieldViolations" in d]
    assert [v["fieldViolations"][0]["field"] for v in violations] == ([field] if field else [])


@pytest.mark.asyncio
async def test_scripted_unregistered_has_googles_shape(
    service: MockPushService, client: httpx.AsyncClient, access_token: str
) -> None:
    service.set_rules(["provider=fcm:404:UNREGISTERED", "provider=fcm:503:retry-after=2"])
    headers = {"authorization": f"Bearer {access_token}"}
    answer = await client.post(SEND, json=message(), headers=headers)
    assert answer.status_code == 404
    assert answer.json() == {
        "error": {
            "code": 404,
            "message": "Requested entity was not found.",
            "status": "NOT_FOUND",
            "details": [
                {
                    "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                    "errorCode": "UNREGISTERED",
                }
            ],
        }
    }
    assert service.pushes[-1].reason == "UNREGISTERED"
    service.set_rules(["provider=fcm:503:retry-after=2"])
    busy = await client.post(SEND, json=message(), headers=headers)
    assert (busy.status_code, busy.headers["retry-after"]) == (503, "2")
    assert busy.json()["error"]["details"][0]["errorCode"] == "UNAVAILABLE"
