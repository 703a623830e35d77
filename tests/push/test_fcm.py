"""FCM provider: OAuth2 JWT-bearer token and HTTP v1 over HTTP/2 + TLS to the mock service."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from sipushd.core.payload import PushKind, PushRequest
from sipushd.push.base import PermanentPushError, PushOutcome, TemporaryPushError
from sipushd.push.dispatcher import Dispatcher
from sipushd.push.fcm import REFRESH_RETRY, AccessTokenSource, FcmProvider
from sipushd.push.settings import DispatcherSettings, FcmAppSettings
from sipushd.push.tls import client_context
from sipushd.testing.mock_pns import MockPushService, write_test_service_account
from tests.push.helpers import PROJECT, TOKEN, make_request


def fcm_request(kind: PushKind = PushKind.CALL, **changes: object) -> PushRequest:
    return make_request(kind, provider="fcm", app_id=PROJECT, team_id=None, **changes)


@pytest.mark.parametrize("kind", list(PushKind))
@pytest.mark.asyncio
async def test_data_message_on_the_wire(
    fcm: FcmProvider, pns: MockPushService, kind: PushKind
) -> None:
    request = fcm_request(kind, ttl=45, chat_room_addr="sip:room@conf.example.org")
    result = await fcm.send(request)
    assert result.outcome is PushOutcome.DELIVERED
    assert result.push_id == f"projects/{PROJECT}/messages/1"
    push = await pns.wait_for_push()
    assert push.status == 200  # the access token came from the mock's /token
    assert push.path == f"/v1/projects/{PROJECT}/messages:send"
    assert push.headers["authorization"].startswith("Bearer ")
    assert push.headers["content-type"] == "application/json"
    assert push.headers["user-agent"].startswith("sipushd/")
    message = push.payload["message"]
    assert message["token"] == TOKEN
    assert "notification" not in message  # data-only: the app's service wakes up
    assert message["android"]["priority"] == "high"
    assert message["android"]["ttl"] in ("45s", "44s")
    data = message["data"]
    assert all(isinstance(value, str) for value in data.values())
    assert data["kind"] == kind.value
    assert data["call_id"] == request.call_id
    assert data["chat_room_addr"] == "sip:room@conf.example.org"
    assert data["from_uri"] == "sip:alice@example.org"
    assert data["display_name"] == "Alice"
    assert data["uuid"] == request.instance
    assert "send_time" in data


def service_account(pns: MockPushService, tmp_path: Path) -> dict[str, Any]:
    """A test service account whose token endpoint is the mock's."""
    path = write_test_service_account(tmp_path / "sa.json", pns.token_uri, PROJECT)
    account: dict[str, Any] = json.loads(path.read_text())
    return account


def token_client(pns: MockPushService, sent: list[httpx.Request]) -> httpx.AsyncClient:
    """A client for the mock's token endpoint that lists every request it sends."""

    async def record(request: httpx.Request) -> None:
        sent.append(request)

    return httpx.AsyncClient(
        http2=True,
        verify=client_context(pns.ca_file, alpn=()),
        trust_env=False,
        event_hooks={"request": [record]},
    )


@pytest.mark.asyncio
async def test_access_token_is_cached_and_refreshed_in_the_background(
    pns: MockPushService, tmp_path: Path
) -> None:
    account = service_account(pns, tmp_path)
    now = [time.time()]
    sent: list[httpx.Request] = []
    async with token_client(pns, sent) as client:
        source = AccessTokenSource(account, client, clock=lambda: now[0])
        first, again = await asyncio.gather(source.token(), source.token())
        assert again == first
        assert len(sent) == 1  # one fetch for every push waiting
        now[0] += 3200  # the mock's tokens live 3600 s; refreshed 300 s early
        assert await source.token() == first
        assert source.fetching is None
        now[0] += 200
        assert await source.token() == first  # still valid: the push does not wait
        refresh = source.fetching
        assert refresh is not None
        assert await source.token() == first  # and it does not start a second fetch
        second = await refresh
        assert second != first
        assert await source.token() == second
        assert len(sent) == 2
        source.invalidate()
        assert await source.token() not in (first, second)


@pytest.mark.asyncio
async def test_failed_refresh_keeps_the_token_until_it_expires(
    pns: MockPushService, tmp_path: Path
) -> None:
    account = service_account(pns, tmp_path)
    now = [time.time()]
    sent: list[httpx.Request] = []
    async with token_client(pns, sent) as client:
        source = AccessTokenSource(account, client, clock=lambda: now[0])
        first = await source.token()
        await pns.stop()  # the token endpoint is gone
        now[0] += 3400
        assert await source.token() == first
        refresh = source.fetching
        assert refresh is not None
        with pytest.raises(TemporaryPushError):
            await refresh
        now[0] += REFRESH_RETRY - 1
        assert await source.token() == first
        assert source.fetching is None  # not tried again on every push
        now[0] += 1
        assert await source.token() == first
        retry = source.fetching
        assert retry is not None
        with pytest.raises(TemporaryPushError):
            await retry
        assert len(sent) == 3
        now[0] += 200  # 60 s before the token's expiry: no longer sent
        with pytest.raises(TemporaryPushError) as info:
            await source.token()
    assert info.value.reason == "oauth2_unreachable"


@pytest.mark.asyncio
async def test_rejected_assertion_is_permanent(pns: MockPushService, tmp_path: Path) -> None:
    account = service_account(pns, tmp_path)
    async with httpx.AsyncClient(verify=client_context(pns.ca_file), trust_env=False) as client:
        source = AccessTokenSource(account, client, clock=lambda: 1000.0)  # exp long past
        with pytest.raises(PermanentPushError) as info:
            await source.token()
    assert (info.value.status, info.value.reason) == (400, "oauth2_rejected")
    assert "invalid_grant" in info.value.detail


@pytest.mark.asyncio
async def test_unregistered_token_is_dead(fcm: FcmProvider, pns: MockPushService) -> None:
    pns.set_rules([f"token={TOKEN}:404:UNREGISTERED"])
    result = await fcm.send(fcm_request())
    assert result.outcome is PushOutcome.DEAD_TOKEN
    assert (result.status, result.reason) == (404, "UNREGISTERED")


@pytest.mark.asyncio
async def test_invalid_registration_token_is_dead(fcm: FcmProvider) -> None:
    # The mock answers like FCM: 400 INVALID_ARGUMENT "The registration token is not a valid..."
    result = await fcm.send(fcm_request(token="not a token"))
    assert result.outcome is PushOutcome.DEAD_TOKEN
    assert (result.status, result.reason) == (400, "INVALID_ARGUMENT")


@pytest.mark.asyncio
async def test_other_client_errors_are_permanent(fcm: FcmProvider, pns: MockPushService) -> None:
    pns.set_rules(["token=*:400:INVALID_ARGUMENT:first=1", "token=*:403:SENDER_ID_MISMATCH"])
    with pytest.raises(PermanentPushError) as invalid:
        await fcm.send(fcm_request())  # about the message, not the token
    assert invalid.value.reason == "INVALID_ARGUMENT"
    with pytest.raises(PermanentPushError) as mismatch:
        await fcm.send(fcm_request())
    assert (mismatch.value.status, mismatch.value.reason) == (403, "SENDER_ID_MISMATCH")


@pytest.mark.asyncio
async def test_quota_errors_carry_retry_after(fcm: FcmProvider, pns: MockPushService) -> None:
    pns.set_rules(["token=*:429:QUOTA_EXCEEDED:retry-after=7"])
    with pytest.raises(TemporaryPushError) as info:
        await fcm.send(fcm_request())
    assert (info.value.status, info.value.reason, info.value.retry_after) == (
        429,
        "QUOTA_EXCEEDED",
        7.0,
    )


@pytest.mark.asyncio
async def test_dispatcher_honours_retry_after_and_deadline(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    pns.set_rules(["token=*:503:UNAVAILABLE:retry-after=1:first=1", "token=*:500:INTERNAL:first=1"])
    dispatcher = Dispatcher({"fcm": fcm}, DispatcherSettings(backoff_initial=0.02))
    await dispatcher.start()
    result = await dispatcher.push(fcm_request())
    assert result.delivered and result.attempts == 3
    first, second, _ = pns.pushes
    assert second.time - first.time >= 1.0  # Retry-After, not the 20 ms backoff
    pns.set_rules(["token=*:429:QUOTA_EXCEEDED:retry-after=30"])
    refused = await dispatcher.push(fcm_request(ttl=5))
    await dispatcher.stop()
    assert (refused.reason, refused.attempts, refused.status) == ("deadline", 1, 429)


@pytest.mark.asyncio
async def test_expired_access_token_is_fetched_again(
    fcm: FcmProvider, pns: MockPushService
) -> None:
    app = fcm._apps[PROJECT]
    await app.tokens.token()
    app.tokens._token = "ya29.revoked"  # FCM answers 401 for it
    with pytest.raises(TemporaryPushError) as info:
        await fcm.send(fcm_request())
    assert info.value.status == 401
    assert (await fcm.send(fcm_request())).delivered


@pytest.mark.asyncio
async def test_unknown_project_is_permanent(fcm: FcmProvider) -> None:
    with pytest.raises(PermanentPushError) as info:
        await fcm.send(make_request(provider="fcm", app_id="other-project"))
    assert info.value.reason == "unknown_app"


@pytest.mark.asyncio
async def test_unreachable_service_is_temporary(pns: MockPushService, tmp_path: Path) -> None:
    account = write_test_service_account(tmp_path / "sa.json", pns.token_uri, PROJECT)
    settings = FcmAppSettings(PROJECT, account, endpoint=pns.base_url, ca_file=pns.ca_file)
    await pns.stop()
    provider = FcmProvider([settings])
    with pytest.raises(TemporaryPushError) as info:
        await provider.send(fcm_request())
    await provider.stop()
    assert info.value.reason == "oauth2_unreachable"
