"""APNs provider: the real aioapns client over HTTP/2 + TLS to the mock push service."""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sipushd.core.payload import PushKind, PushService
from sipushd.push.apns import ApnsProvider, ProviderTokenSigner
from sipushd.push.base import PermanentPushError, PushOutcome, TemporaryPushError
from sipushd.push.dispatcher import Dispatcher
from sipushd.push.settings import ApnsAppSettings, DispatcherSettings
from sipushd.testing.mock_pns import MockPushService
from tests.push.certs import make_client_cert_server
from tests.push.helpers import BUNDLE, KEY_ID, TEAM, TOKEN, apns_app, make_request, write_p256_key


@pytest.mark.asyncio
async def test_voip_call_push_headers_and_payload(apns: ApnsProvider, pns: MockPushService) -> None:
    request = make_request(service=PushService.VOIP, ttl=90)
    result = await apns.send(request)
    assert result.outcome is PushOutcome.DELIVERED and result.status == 200
    push = await pns.wait_for_push()
    assert push.status == 200  # the mock verified the ES256 token with the test's public key
    assert push.path == f"/3/device/{TOKEN}"
    headers = push.headers
    assert headers["apns-topic"] == f"{BUNDLE}.voip"
    assert headers["apns-push-type"] == "voip"
    assert headers["apns-priority"] == "10"
    assert abs(int(headers["apns-expiration"]) - int(request.deadline)) <= 1
    assert headers["apns-collapse-id"] == request.call_id
    assert headers["apns-id"] == result.push_id
    assert headers["authorization"].startswith("bearer ")
    payload = push.payload
    assert payload["call_id"] == request.call_id
    assert payload["from_uri"] == "sip:alice@example.org"
    assert payload["display_name"] == "Alice"
    assert payload["uuid"] == request.instance
    assert "send_time" in payload


@pytest.mark.parametrize(
    ("kind", "push_type", "priority", "loc_key"),
    [
        (PushKind.CALL, "alert", "10", "IC_MSG"),
        (PushKind.MESSAGE, "alert", "10", "IM_MSG"),
        (PushKind.MISSED_CALL, "alert", "10", "Accepted elsewhere"),
        (PushKind.REFRESH, "background", "5", None),
    ],
)
@pytest.mark.asyncio
async def test_each_kind_on_the_wire(
    apns: ApnsProvider,
    pns: MockPushService,
    kind: PushKind,
    push_type: str,
    priority: str,
    loc_key: str | None,
) -> None:
    request = make_request(
        kind,
        chat_room_addr="sip:chat@conf.example.org" if kind is PushKind.MESSAGE else None,
        cancel_reason='SIP;cause=200;text="Call completed elsewhere"',
    )
    assert (await apns.send(request)).delivered
    push = await pns.wait_for_push()
    assert push.headers["apns-topic"] == BUNDLE
    assert push.headers["apns-push-type"] == push_type
    assert push.headers["apns-priority"] == priority
    aps = push.payload["aps"]
    if loc_key is None:
        assert aps == {"content-available": 1}
    else:
        assert aps["alert"]["loc-key"] == loc_key
        assert aps["alert"]["loc-args"] == ["Alice"]
        assert "sound" in aps
    assert ("mutable-content" in aps) == (kind is PushKind.MESSAGE)
    if kind is PushKind.MESSAGE:
        assert push.payload["chat_room_addr"] == "sip:chat@conf.example.org"
    if kind in (PushKind.CALL, PushKind.MISSED_CALL):
        assert push.headers["apns-collapse-id"] == request.call_id


@pytest.mark.asyncio
async def test_provider_token_is_a_valid_es256_jwt(apns_key: tuple[Path, Path]) -> None:
    signer = ProviderTokenSigner(apns_key[0].read_bytes(), KEY_ID, TEAM)
    header = signer.get_header()
    scheme, token = header.split(" ")
    assert scheme == "bearer"
    public = load_pem_public_key(apns_key[1].read_bytes())
    claims = jwt.decode(token, public, algorithms=["ES256"])  # type: ignore[arg-type]
    assert claims["iss"] == TEAM
    assert abs(claims["iat"] - time.time()) < 60
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}


def test_provider_token_refresh_window(apns_key: tuple[Path, Path]) -> None:
    now = [1000.0]
    signer = ProviderTokenSigner(apns_key[0].read_bytes(), KEY_ID, TEAM, clock=lambda: now[0])
    first = signer.get_header()
    now[0] += 39 * 60
    assert signer.get_header() == first  # reused: Apple refuses updates every < 20 min
    now[0] += 2 * 60
    second = signer.get_header()
    assert second != first  # 41 min: refreshed well inside the 60-minute limit
    now[0] += 60
    assert not signer.invalidate()  # 1 min old: too young to replace
    assert signer.get_header() == second
    now[0] += 20 * 60
    assert signer.invalidate()
    assert signer.get_header() != second


@pytest.mark.asyncio
async def test_wrong_signing_key_is_refused(pns: MockPushService, tmp_path: Path) -> None:
    other, _ = write_p256_key(tmp_path / "other.p8")
    provider = ApnsProvider([apns_app(pns, other)])
    try:
        with pytest.raises(PermanentPushError) as info:
            await provider.send(make_request())
    finally:
        await provider.stop()
    assert (info.value.status, info.value.reason) == (403, "InvalidProviderToken")


@pytest.mark.parametrize(
    ("status", "reason"),
    [(410, "Unregistered"), (400, "BadDeviceToken"), (400, "DeviceTokenNotForTopic")],
)
@pytest.mark.asyncio
async def test_dead_tokens_are_results(
    apns: ApnsProvider, pns: MockPushService, status: int, reason: str
) -> None:
    pns.set_rules([f"token={TOKEN}:{status}:{reason}"])
    result = await apns.send(make_request())
    assert result.outcome is PushOutcome.DEAD_TOKEN
    assert (result.status, result.reason) == (status, reason)


@pytest.mark.asyncio
async def test_error_classes(apns: ApnsProvider, pns: MockPushService) -> None:
    pns.set_rules(["token=*:400:TopicDisallowed:first=1", "token=*:503:ServiceUnavailable"])
    with pytest.raises(PermanentPushError) as permanent:
        await apns.send(make_request())
    assert permanent.value.reason == "TopicDisallowed"
    with pytest.raises(TemporaryPushError) as temporary:
        await apns.send(make_request())
    assert (temporary.value.status, temporary.value.reason) == (503, "ServiceUnavailable")


@pytest.mark.asyncio
async def test_dispatcher_retries_inside_the_deadline(
    apns: ApnsProvider, pns: MockPushService
) -> None:
    pns.set_rules(["token=*:500:InternalServerError:first=2"])
    dispatcher = Dispatcher({"apns": apns}, DispatcherSettings(backoff_initial=0.02))
    await dispatcher.start()
    result = await dispatcher.push(make_request())
    await dispatcher.stop()
    assert result.delivered and result.attempts == 3
    assert [p.status for p in pns.pushes] == [500, 500, 200]


@pytest.mark.asyncio
async def test_dispatcher_stops_retrying_at_the_deadline(
    apns: ApnsProvider, pns: MockPushService
) -> None:
    pns.set_rules(["token=*:500:InternalServerError"])
    dispatcher = Dispatcher({"apns": apns}, DispatcherSettings(backoff_initial=0.02))
    await dispatcher.start()
    request = make_request(ttl=0.4)
    result = await dispatcher.push(request)
    await dispatcher.stop()
    assert result.outcome is PushOutcome.FAILED and result.reason == "deadline"
    # The last attempt may be cut short by the deadline itself (no answer, status None).
    assert result.status in (500, None) and result.attempts >= len(pns.pushes) >= 2
    assert all(p.status == 500 for p in pns.pushes)
    assert all(p.time < request.deadline for p in pns.pushes)


@pytest.mark.asyncio
async def test_late_answers_after_a_timeout_leave_the_connection_usable(
    apns: ApnsProvider, pns: MockPushService
) -> None:
    errors: list[dict[str, object]] = []
    asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
    pns.set_rules(["delay=0.3:first=1"])
    settings = DispatcherSettings(attempt_timeout=0.1, backoff_initial=0.01)
    dispatcher = Dispatcher({"apns": apns}, settings)
    await dispatcher.start()
    result = await dispatcher.push(make_request())
    assert result.delivered and result.attempts == 2
    await asyncio.sleep(0.3)  # the first, abandoned answer arrives now
    again = await dispatcher.push(make_request())
    await dispatcher.stop()
    assert again.delivered and again.attempts == 1
    assert errors == []  # no "protocol.data_received() call failed"


@pytest.mark.asyncio
async def test_connection_loss_is_temporary(apns: ApnsProvider, pns: MockPushService) -> None:
    pns.set_rules(["delay=5"])
    sending = asyncio.ensure_future(apns.send(make_request()))
    await pns.wait_for_push()
    await pns.stop()
    with pytest.raises(TemporaryPushError) as info:
        await sending
    assert info.value.reason == "connection_lost"


@pytest.mark.asyncio
async def test_unreachable_endpoint_is_temporary(
    pns: MockPushService, apns_key: tuple[Path, Path]
) -> None:
    settings = apns_app(pns, apns_key[0])
    await pns.stop()  # nothing listens on its port now
    provider = ApnsProvider([settings])
    with pytest.raises(TemporaryPushError) as info:
        await provider.send(make_request())
    await provider.stop()
    assert info.value.reason == "connect_failed"
    assert "Connect" in info.value.detail or "refused" in info.value.detail


@pytest.mark.asyncio
async def test_untrusted_server_certificate_is_refused(
    pns: MockPushService, apns_key: tuple[Path, Path]
) -> None:
    provider = ApnsProvider([apns_app(pns, apns_key[0], ca_file=None)])
    with pytest.raises(TemporaryPushError) as info:
        await provider.send(make_request())
    await provider.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in info.value.detail


@pytest.mark.asyncio
async def test_apps_are_chosen_by_team_and_bundle(
    pns: MockPushService, apns_key: tuple[Path, Path]
) -> None:
    provider = ApnsProvider(
        [
            apns_app(pns, apns_key[0]),
            apns_app(pns, apns_key[0], bundle_id="org.example.other"),
        ]
    )
    try:
        assert (await provider.send(make_request(app_id="org.example.other"))).delivered
        assert (await provider.send(make_request(team_id=None))).delivered  # unique bundle
        with pytest.raises(PermanentPushError) as info:
            await provider.send(make_request(team_id="OTHERTEAM1"))
        assert info.value.reason == "unknown_app"
    finally:
        await provider.stop()
    assert [p.headers["apns-topic"] for p in pns.pushes] == ["org.example.other", BUNDLE]


@pytest.mark.asyncio
async def test_oversized_display_name_is_trimmed_not_refused(
    apns: ApnsProvider, pns: MockPushService
) -> None:
    result = await apns.send(make_request(caller_display="\u00e9" * 6000))
    assert result.delivered  # the mock answers 413 PayloadTooLarge above 4096 bytes
    push = await pns.wait_for_push()
    assert push.payload["display_name"].endswith("\u2026")


@pytest.mark.asyncio
async def test_voip_token_for_a_message_is_a_permanent_error(apns: ApnsProvider) -> None:
    with pytest.raises(PermanentPushError) as info:
        await apns.send(make_request(PushKind.MESSAGE, service=PushService.VOIP))
    assert info.value.reason == "invalid_request"


@pytest.mark.asyncio
async def test_certificate_auth(tmp_path: Path, pns_state: Path) -> None:
    """A TLS server that demands a client certificate from the test's own CA."""
    server, cert_file = await make_client_cert_server(tmp_path, pns_state)
    settings = ApnsAppSettings(
        team_id=TEAM,
        bundle_id=BUNDLE,
        cert_file=cert_file,
        endpoint=f"https://127.0.0.1:{server.port}",
        ca_file=pns_state / "ca.pem",
    )
    provider = ApnsProvider([settings])
    try:
        result = await provider.send(make_request(service=PushService.VOIP))
        assert result.delivered
        assert server.seen[0]["apns-topic"] == f"{BUNDLE}.voip"
        assert "authorization" not in server.seen[0]
        without = ApnsProvider([apns_app_like(settings, tmp_path)])
        with pytest.raises(TemporaryPushError):
            await without.send(make_request())
        await without.stop()
    finally:
        await provider.stop()
        await server.stop()


def apns_app_like(settings: ApnsAppSettings, tmp_path: Path) -> ApnsAppSettings:
    """The same app with token auth instead of a client certificate."""
    key, _ = write_p256_key(tmp_path / "k.p8")
    return ApnsAppSettings(
        team_id=settings.team_id,
        bundle_id=settings.bundle_id,
        key_file=key,
        key_id=KEY_ID,
        endpoint=settings.endpoint,
        ca_file=settings.ca_file,
    )


def test_settings_need_exactly_one_auth_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not both or neither"):
        ApnsAppSettings(team_id=TEAM, bundle_id=BUNDLE)
    with pytest.raises(ValueError, match="not both or neither"):
        ApnsAppSettings(
            team_id=TEAM, bundle_id=BUNDLE, key_file=tmp_path, key_id="K", cert_file=tmp_path
        )
    assert ssl.HAS_ALPN
