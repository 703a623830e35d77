"""Repeated ringing alerts (push.call_remote_push_interval) for iOS devices without a VoIP token."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipushd.core.payload import PushKind, PushRequest, PushService, build_apns
from sipushd.sip import Request
from tests.integration.proxy_helpers import (
    ALERT_PARAMS,
    VOIP_PARAMS,
    PushRecorder,
    answer,
    config,
    invite,
    phone,
    register_asleep,
    registered,
    running,
)

ALERT_TOKEN = "44ee55ff"


def alerts(recorder: PushRecorder) -> list[PushRequest]:
    return [
        p
        for p in recorder.pushes
        if p.kind is PushKind.CALL and p.service is PushService.REMOTE and p.token == ALERT_TOKEN
    ]


async def wait_alerts(recorder: PushRecorder, count: int) -> list[PushRequest]:
    async with asyncio.timeout(5):
        while len(alerts(recorder)) < count:
            recorder.arrived.clear()
            await recorder.arrived.wait()
    return alerts(recorder)


def cancel_of(call: Request) -> Request:
    headers = call.headers.set("CSeq", f"{call.cseq.seq} CANCEL")
    return Request("CANCEL", call.uri, headers.remove("Content-Type").remove("Contact"))


@pytest.mark.asyncio
async def test_alert_push_rings_again_until_the_device_registers_voip_never_repeats(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, push={"call_remote_push_interval": 0.2})
    async with running(cfg) as (daemon, pushes):
        ipad = await registered(daemon, params=ALERT_PARAMS, uuid=31)
        iphone = await registered(daemon, params=VOIP_PARAMS, uuid=32)
        await ipad.close()
        await iphone.close()
        alice = await phone(daemon, "udp")
        call = invite(alice)
        alice.send(call)
        first, again, third = (await wait_alerts(pushes, 3))[:3]
        assert [p.sequence for p in (first, again, third)] == [0, 1, 2]
        collapse = {build_apns(p, 0.0).collapse_id for p in (first, again, third)}
        assert collapse == {call.call_id}, "the notification is updated, not stacked"
        voip = [p for p in pushes.pushes if p.service is PushService.VOIP]
        assert len(voip) == 1, "a VoIP push is never repeated"
        assert daemon.dispatcher is not None
        assert daemon.dispatcher.stats.deduplicated == 0
        # The iPad wakes: it gets the INVITE and no more ringing alerts.
        awake = await registered(daemon, params=ALERT_PARAMS, uuid=31)
        forwarded = await awake.next_request("INVITE")
        count = len(alerts(pushes))
        await asyncio.sleep(0.5)
        assert len(alerts(pushes)) == count
        answer(awake, forwarded, 200)
        assert (await alice.final_response()).status == 200
        for ua in (awake, alice):
            await ua.close()


@pytest.mark.asyncio
async def test_cancel_stops_the_ringing_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path, push={"call_remote_push_interval": 0.1})
    async with running(cfg) as (daemon, pushes):
        await register_asleep(daemon, params=ALERT_PARAMS, uuid=33)
        alice = await phone(daemon, "udp")
        call = invite(alice)
        alice.send(call)
        await wait_alerts(pushes, 2)
        alice.send(cancel_of(call))
        methods = {(await alice.final_response()).cseq.method for _ in range(2)}
        assert methods == {"CANCEL", "INVITE"}
        count = len(alerts(pushes))
        await asyncio.sleep(0.4)
        assert len(alerts(pushes)) == count
        missed = [p for p in pushes.pushes if p.kind is PushKind.MISSED_CALL]
        assert len(missed) == 1
        await alice.close()


@pytest.mark.asyncio
async def test_call_timeout_stops_the_ringing_alerts(tmp_path: Path) -> None:
    cfg = config(tmp_path, push={"call_remote_push_interval": 0.1}, routing={"call_timeout": 0.35})
    async with running(cfg) as (daemon, pushes):
        await register_asleep(daemon, params=ALERT_PARAMS, uuid=34)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        assert (await alice.final_response(timeout=5)).status == 480
        count = len(alerts(pushes))
        assert count >= 2
        await asyncio.sleep(0.4)
        assert len(alerts(pushes)) == count
        await alice.close()


@pytest.mark.asyncio
async def test_without_an_interval_the_alert_is_sent_once(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        await register_asleep(daemon, params=ALERT_PARAMS, uuid=35)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        await wait_alerts(pushes, 1)
        await asyncio.sleep(0.4)
        assert len(alerts(pushes)) == 1
        await alice.close()


@pytest.mark.asyncio
async def test_a_delayed_push_rings_again_too(tmp_path: Path) -> None:
    # push.mode unreachable: the live flow stays silent for push.delay, then the push,
    # which the interval (shorter than the delay) repeats.
    push = {"mode": "unreachable", "delay": 0.3, "call_remote_push_interval": 0.1}
    async with running(config(tmp_path, push=push)) as (daemon, pushes):
        ipad = await registered(daemon, params=ALERT_PARAMS, uuid=36)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        forwarded = await ipad.next_request("INVITE")
        assert [p.sequence for p in (await wait_alerts(pushes, 3))[:3]] == [0, 1, 2]
        answer(ipad, forwarded, 180)
        while (await alice.receive()).status != 180:  # type: ignore[union-attr]
            pass
        count = len(alerts(pushes))
        await asyncio.sleep(0.4)
        assert len(alerts(pushes)) == count, "it rings over SIP: no more alerts"
        answer(ipad, forwarded, 486)
        for ua in (ipad, alice):
            await ua.close()
