"""The proxy in a daemon on loopback: online calls, push-and-hold, CANCEL, forking, timeouts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipushd import metrics
from sipushd.core.payload import PushKind, PushService
from sipushd.core.proxy import CALL_COMPLETED_ELSEWHERE
from sipushd.sip import Request, Response
from tests.integration.proxy_helpers import (
    ALERT_PARAMS,
    VOIP_PARAMS,
    answer,
    auth_config,
    config,
    in_dialog,
    invite,
    no_request,
    phone,
    register,
    register_asleep,
    registered,
    running,
)


@pytest.mark.asyncio
async def test_online_callee_gets_the_call_and_the_dialog_runs_over_its_connection(
    tmp_path: Path,
) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        bob = await phone(daemon, "tcp")
        alice = await phone(daemon, "udp")
        assert (await register(bob)).status == 200
        alice.send(invite(alice))
        forwarded = await bob.next_request("INVITE")
        assert forwarded.max_forwards == 69
        assert len(forwarded.vias) == 2
        assert forwarded.record_routes, "Record-Route so in-dialog requests come back"
        answer(bob, forwarded, 180)
        ringing = await alice.receive()
        while isinstance(ringing, Response) and ringing.status == 100:
            ringing = await alice.receive()
        assert isinstance(ringing, Response) and ringing.status == 180
        answer(bob, forwarded, 200)
        ok = await alice.final_response()
        assert ok.status == 200 and len(ok.vias) == 1
        sent = invite(alice)  # only for its CSeq
        alice.send(in_dialog(alice, sent, ok, "ACK"))
        ack = await bob.next_request("ACK")
        assert ack.to.tag == "callee"
        alice.send(in_dialog(alice, sent, ok, "BYE", cseq=9))
        bye = await bob.next_request("BYE")
        answer(bob, bye, 200)
        bye_ok = await alice.final_response()
        assert bye_ok.status == 200 and bye_ok.cseq.method == "BYE"
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_held_invite_is_forked_once_to_the_phone_that_registers_after_the_push(
    tmp_path: Path,
) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        await register_asleep(daemon, params=VOIP_PARAMS, uuid=1)  # iOS killed the app's socket
        alice = await phone(daemon, "udp")
        call = invite(alice)
        alice.send(call)
        (push,) = await pushes.wait_for(1)
        assert push.call_id == call.call_id
        assert push.service is PushService.VOIP and push.kind is PushKind.CALL
        assert push.caller_uri == "sip:alice@example.net"
        statuses = [(await alice.receive()).status for _ in range(2)]  # type: ignore[union-attr]
        assert 110 in statuses
        assert daemon.proxy is not None
        (held,) = daemon.proxy.held()
        assert held["call_id"] == call.call_id and held["aor"] == "sip:bob@example.org"
        wakeups_before = metrics.WAKEUPS.labels(provider="apns")._value.get()
        awake = await registered(daemon, params=VOIP_PARAMS, uuid=1)
        forwarded = await awake.next_request("INVITE")
        assert forwarded.call_id == call.call_id
        assert metrics.WAKEUPS.labels(provider="apns")._value.get() == wakeups_before + 1
        # A refresh shortly after must not fork the same INVITE again.
        assert (await register(awake, params=VOIP_PARAMS, uuid=1)).status == 200
        assert await no_request(awake, "INVITE")
        answer(awake, forwarded, 200)
        ok = await alice.final_response()
        assert ok.status == 200
        assert daemon.proxy is not None and daemon.proxy.held_calls == 0
        await awake.close()
        await alice.close()


@pytest.mark.asyncio
async def test_challenged_register_then_resent_forks_exactly_one_invite(tmp_path: Path) -> None:
    cfg = auth_config(tmp_path, "bob")
    async with running(cfg) as (daemon, pushes):
        alice = await phone(daemon, "udp")
        asleep = await phone(daemon)
        first = await register(asleep, params=VOIP_PARAMS, uuid=2)
        assert first.status == 401
        from tests.integration.proxy_helpers import authorization

        creds = authorization(first, "bob", "secret-pass", "REGISTER", "sip:example.org")
        ok = await register(asleep, params=VOIP_PARAMS, uuid=2, headers=(("Authorization", creds),))
        assert ok.status == 200
        await asleep.close()
        alice.send(invite(alice))
        await pushes.wait_for(1)
        awake = await phone(daemon)
        challenge = await register(awake, params=VOIP_PARAMS, uuid=2)
        assert challenge.status == 401
        assert await no_request(awake, "INVITE", wait=0.2)
        creds = authorization(challenge, "bob", "secret-pass", "REGISTER", "sip:example.org")
        again = await register(
            awake, params=VOIP_PARAMS, uuid=2, headers=(("Authorization", creds),)
        )
        assert again.status == 200
        forwarded = await awake.next_request("INVITE")
        assert await no_request(awake, "INVITE")
        answer(awake, forwarded, 486)
        busy = await alice.final_response()
        assert busy.status == 486
        await awake.close()
        await alice.close()


@pytest.mark.asyncio
async def test_caller_cancel_while_held_gives_487_missed_call_push_and_late_invite_cancel(
    tmp_path: Path,
) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        ipad = await registered(daemon, params=ALERT_PARAMS, uuid=3)
        iphone = await registered(daemon, params=VOIP_PARAMS, uuid=4)
        await ipad.close()
        await iphone.close()
        alice = await phone(daemon, "udp")
        call = invite(alice)
        alice.send(call)
        await pushes.wait_for(2)
        cancel = Request(
            "CANCEL",
            call.uri,
            call.headers.set("CSeq", f"{call.cseq.seq} CANCEL")
            .remove("Content-Type")
            .remove("Contact")
            .add("Reason", 'SIP;cause=487;text="Caller gave up"'),
        )
        alice.send(cancel)
        finals = {(await alice.final_response()).cseq.method: 0 for _ in range(2)}
        assert set(finals) == {"CANCEL", "INVITE"}
        missed = await pushes.wait_for(3)
        assert missed[2].kind is PushKind.MISSED_CALL
        assert missed[2].service is PushService.REMOTE and missed[2].token == "44ee55ff"
        assert missed[2].cancel_reason == 'SIP;cause=487;text="Caller gave up"'
        # The VoIP-woken phone registers afterwards: INVITE, then CANCEL (CallKit).
        woken = await registered(daemon, params=VOIP_PARAMS, uuid=4)
        late = await woken.next_request("INVITE")
        answer(woken, late, 180)
        cancelled = await woken.next_request("CANCEL")
        assert cancelled.headers.get("Reason") == 'SIP;cause=487;text="Caller gave up"'
        answer(woken, cancelled, 200)
        answer(woken, late, 487)
        await woken.close()
        await alice.close()


@pytest.mark.asyncio
async def test_two_devices_ring_one_answers_the_other_gets_cancel_with_reason(
    tmp_path: Path,
) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        desk = await phone(daemon)
        mobile = await phone(daemon, "udp")
        assert (await register(desk, uuid=5)).status == 200
        assert (await register(mobile, uuid=6)).status == 200
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        at_desk = await desk.next_request("INVITE")
        at_mobile = await mobile.next_request("INVITE")
        answer(desk, at_desk, 180, tag="desk")
        answer(mobile, at_mobile, 180, tag="mobile")
        answer(desk, at_desk, 200, tag="desk")
        ok = await alice.final_response()
        assert ok.status == 200 and ok.to.tag == "desk"
        cancel = await mobile.next_request("CANCEL")
        assert cancel.headers.get("Reason") == CALL_COMPLETED_ELSEWHERE
        assert cancel.top_via.branch == at_mobile.top_via.branch
        answer(mobile, cancel, 200, tag="mobile")
        answer(mobile, at_mobile, 487, tag="mobile")
        await asyncio.sleep(0)
        for ua in (desk, mobile, alice):
            await ua.close()


@pytest.mark.asyncio
async def test_nobody_answers_within_call_timeout_480(tmp_path: Path) -> None:
    async with running(config(tmp_path, routing={"call_timeout": 1})) as (daemon, pushes):
        await register_asleep(daemon, params=VOIP_PARAMS, uuid=7)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        await pushes.wait_for(1)
        final = await alice.final_response(timeout=5)
        assert final.status == 480
        assert daemon.proxy is not None and daemon.proxy.held_calls == 0
        await alice.close()


@pytest.mark.asyncio
async def test_every_push_failing_ends_the_call_with_480_at_once(tmp_path: Path) -> None:
    async with running(config(tmp_path, routing={"call_timeout": 30})) as (daemon, pushes):
        pushes.fail = True
        await register_asleep(daemon, params=ALERT_PARAMS, uuid=8)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        final = await alice.final_response(timeout=5)
        assert final.status == 480
        await alice.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("sip:nobody@example.org", 480),  # served domain, no binding
        ("sip:carol@elsewhere.example", 403),  # not an open relay
    ],
)
async def test_unreachable_targets(tmp_path: Path, target: str, status: int) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        alice = await phone(daemon, "udp")
        alice.send(invite(alice, target))
        final = await alice.final_response()
        assert final.status == status
        await alice.close()


@pytest.mark.asyncio
async def test_options_to_a_user_is_forwarded_and_require_is_not_checked(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        bob = await registered(daemon)
        alice = await phone(daemon, "udp")
        alice.send(alice.build("OPTIONS", "sip:bob@example.org", [("Require", "100rel")]))
        options = await bob.next_request("OPTIONS")
        answer(bob, options, 200)
        assert (await alice.final_response()).status == 200
        await bob.close()
        await alice.close()
