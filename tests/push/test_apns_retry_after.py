"""APNs 429 / 503 answers: the ``retry-after`` header reaches the dispatcher (RFC 9110 §10.2.3).

aioapns drops response headers; ``_ClientProtocol`` keeps this one per request.
The end-to-end tests run the real aioapns client over HTTP/2 to the mock push
service scripted with ``--respond`` rules.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from sipushd.push.apns import ApnsProvider, _ClientProtocol
from sipushd.push.base import PushOutcome, TemporaryPushError, parse_retry_after
from sipushd.push.dispatcher import Dispatcher
from sipushd.push.settings import DispatcherSettings
from sipushd.testing.mock_pns import MockPushService
from tests.push.helpers import make_request

THROTTLING = [(429, "TooManyRequests"), (503, "ServiceUnavailable")]


@pytest.mark.parametrize(("status", "reason"), THROTTLING)
@pytest.mark.asyncio
async def test_throttling_answers_carry_retry_after(
    apns: ApnsProvider, pns: MockPushService, status: int, reason: str
) -> None:
    pns.set_rules([f"token=*:{status}:{reason}:retry-after=7"])
    with pytest.raises(TemporaryPushError) as info:
        await apns.send(make_request())
    assert (info.value.status, info.value.reason, info.value.retry_after) == (status, reason, 7.0)
    pns.set_rules(["token=*:500:InternalServerError"])  # no header: plain backoff
    with pytest.raises(TemporaryPushError) as plain:
        await apns.send(make_request())
    assert plain.value.retry_after is None


@pytest.mark.parametrize(("status", "reason"), THROTTLING)
@pytest.mark.asyncio
async def test_dispatcher_waits_for_retry_after(
    apns: ApnsProvider, pns: MockPushService, status: int, reason: str
) -> None:
    pns.set_rules([f"token=*:{status}:{reason}:retry-after=1:first=1"])
    dispatcher = Dispatcher({"apns": apns}, DispatcherSettings(backoff_initial=0.02))
    await dispatcher.start()
    result = await dispatcher.push(make_request())
    await dispatcher.stop()
    assert result.delivered and result.attempts == 2
    first, second = pns.pushes
    assert (first.status, second.status) == (status, 200)
    assert second.time - first.time >= 1.0  # Retry-After, not the 20 ms backoff


@pytest.mark.asyncio
async def test_retry_after_past_the_deadline_fails_at_once(
    apns: ApnsProvider, pns: MockPushService
) -> None:
    pns.set_rules(["token=*:429:TooManyRequests:retry-after=30"])
    dispatcher = Dispatcher({"apns": apns}, DispatcherSettings(backoff_initial=0.02))
    await dispatcher.start()
    request = make_request(ttl=5)
    result = await dispatcher.push(request)
    finished = time.time()
    await dispatcher.stop()
    assert result.outcome is PushOutcome.FAILED
    assert (result.reason, result.status, result.attempts) == ("deadline", 429, 1)
    assert result.detail.startswith("TooManyRequests")
    assert len(pns.pushes) == 1
    assert finished < request.deadline  # gave up, did not sleep until the deadline


@pytest.mark.asyncio
async def test_header_kept_only_for_a_waiting_request() -> None:
    protocol = _ClientProtocol("", asyncio.get_running_loop(), None, None)
    protocol.requests["waiting"] = asyncio.get_running_loop().create_future()
    for apns_id in (b"waiting", b"abandoned"):
        headers = {b":status": b"429", b"apns-id": apns_id, b"retry-after": b"3"}
        protocol.on_response_received(headers)
    assert protocol.retry_after == {"waiting": "3"}
    assert protocol.request_statuses["waiting"] == "429"  # aioapns still saw the answer


def test_parse_retry_after_forms() -> None:
    now = 1445412480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now) == 0.0  # past: now
    assert parse_retry_after("soon") is None
    assert parse_retry_after("-1") is None
    assert parse_retry_after(None) is None
