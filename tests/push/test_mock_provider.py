"""The in-process recorder provider keeps the payloads the real providers would send."""

from __future__ import annotations

import pytest

from sipushd.core.payload import ApnsPush, FcmPush, PayloadTemplate, PushKind, PushService
from sipushd.push.base import PermanentPushError
from sipushd.push.dispatcher import Dispatcher
from sipushd.push.mock import MockProvider, MockPush
from tests.push.helpers import BUNDLE, PROJECT, make_request


@pytest.mark.asyncio
async def test_records_apns_and_fcm_pushes_through_the_dispatcher() -> None:
    seen: list[MockPush] = []
    mock = MockProvider(
        templates={BUNDLE: PayloadTemplate.from_mapping({"call-id": "{call_id}"})},
        on_push=seen.append,
    )
    dispatcher = Dispatcher({"apns": mock, "fcm": mock})
    await dispatcher.start()
    voip = await dispatcher.push(make_request(service=PushService.VOIP))
    android = await dispatcher.push(make_request(provider="fcm", app_id=PROJECT))
    await dispatcher.stop()
    assert voip.delivered and android.delivered
    assert voip.push_id != android.push_id
    first, second = mock.pushes
    assert seen == [first, second]
    assert isinstance(first.push, ApnsPush) and first.push.topic == f"{BUNDLE}.voip"
    assert "call-id" in first.push.payload and "call_id" not in first.push.payload
    assert isinstance(second.push, FcmPush) and second.push.data["kind"] == "call"


@pytest.mark.asyncio
async def test_refuses_what_the_real_provider_would_refuse() -> None:
    mock = MockProvider()
    with pytest.raises(PermanentPushError):
        await mock.send(make_request(PushKind.MESSAGE, service=PushService.VOIP))
    assert not mock.pushes


@pytest.mark.asyncio
async def test_keeps_the_last_pushes_only() -> None:
    mock = MockProvider(keep=2)
    for _ in range(3):
        await mock.send(make_request())
    assert [p.push_id for p in mock.pushes] == ["mock-2", "mock-3"]
