"""The proxy on loopback: answered elsewhere, push.mode unreachable, upstream, stray 2xx."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from sipushd.core.payload import PushKind, PushService
from sipushd.core.proxy import CALL_COMPLETED_ELSEWHERE
from sipushd.sip import Headers, Response
from tests.integration.proxy_helpers import (
    ALERT_PARAMS,
    VOIP_PARAMS,
    address,
    answer,
    auth_config,
    config,
    invite,
    no_request,
    phone,
    register_asleep,
    registered,
    running,
    running_with_upstream,
)


@pytest.mark.asyncio
async def test_answered_elsewhere_alerts_the_alert_device_and_cancels_the_late_voip_device(
    tmp_path: Path,
) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        desk = await registered(daemon, uuid=10)
        for params, uuid in ((ALERT_PARAMS, 11), (VOIP_PARAMS, 12)):
            await register_asleep(daemon, params=params, uuid=uuid)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        await pushes.wait_for(2)
        at_desk = await desk.next_request("INVITE")
        answer(desk, at_desk, 200, tag="desk")
        assert (await alice.final_response()).status == 200
        missed = (await pushes.wait_for(3))[2]
        assert missed.kind is PushKind.MISSED_CALL and missed.service is PushService.REMOTE
        assert missed.cancel_reason == CALL_COMPLETED_ELSEWHERE
        woken = await registered(daemon, params=VOIP_PARAMS, uuid=12)
        late = await woken.next_request("INVITE")
        answer(woken, late, 180)
        cancel = await woken.next_request("CANCEL")
        assert cancel.headers.get("Reason") == CALL_COMPLETED_ELSEWHERE
        answer(woken, cancel, 200)
        answer(woken, late, 487)
        for ua in (desk, woken, alice):
            await ua.close()


@pytest.mark.asyncio
async def test_push_mode_unreachable_pushes_only_a_silent_live_flow(tmp_path: Path) -> None:
    cfg = config(tmp_path, push={"mode": "unreachable", "delay": 0.2})
    async with running(cfg) as (daemon, pushes):
        bob = await registered(daemon, params=VOIP_PARAMS, uuid=13)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        ringing = await bob.next_request("INVITE")
        answer(bob, ringing, 180)
        assert await no_request(bob, "INVITE", wait=0.5)
        assert pushes.pushes == [], "a ringing phone needs no push"
        answer(bob, ringing, 486)
        assert (await alice.final_response()).status == 486
        # Now the phone stays silent: after push.delay it is pushed.
        second = invite(alice)
        second = second.replace(headers=second.headers.set("Call-ID", secrets.token_hex(6)))
        alice.send(second)
        await bob.next_request("INVITE")
        (push,) = await pushes.wait_for(1)
        assert push.call_id == second.call_id and push.service is PushService.VOIP
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_local_user_calls_outside_through_upstream(tmp_path: Path) -> None:
    async with running_with_upstream(tmp_path) as (daemon, pbx, upstream):
        alice = await phone(daemon, "udp")
        call = alice.build("INVITE", "sip:carol@elsewhere.example", from_="sip:alice@example.org")
        alice.send(call)
        out = await pbx.next_request("INVITE")
        assert str(out.uri) == "sip:carol@elsewhere.example"
        assert str(out.routes[0].uri) == f"{upstream};lr"
        answer(pbx, out, 486)
        assert (await alice.final_response()).status == 486
        # Someone else's user may not use us as a relay.
        foreign = alice.build("INVITE", "sip:carol@elsewhere.example", from_="sip:x@evil.example")
        alice.send(foreign)
        assert (await alice.final_response()).status == 403
        await alice.close()


@pytest.mark.asyncio
async def test_upstream_given_by_host_name_is_looked_up(tmp_path: Path) -> None:
    # RFC 3263 §4.2: a host name with a port is resolved with A/AAAA lookups.
    async with running_with_upstream(tmp_path, host="localhost") as (daemon, pbx, upstream):
        alice = await phone(daemon, "udp")
        alice.send(
            alice.build("INVITE", "sip:carol@elsewhere.example", from_="sip:alice@example.org")
        )
        out = await pbx.next_request("INVITE")
        assert str(out.routes[0].uri) == f"{upstream};lr"  # the name stays in the Route
        answer(pbx, out, 486)
        assert (await alice.final_response()).status == 486
        await alice.close()


@pytest.mark.asyncio
async def test_local_callers_are_challenged_with_407(tmp_path: Path) -> None:
    cfg = auth_config(tmp_path, "alice")
    async with running(cfg) as (daemon, _):
        alice = await phone(daemon, "udp")
        alice.send(alice.build("INVITE", "sip:bob@example.org", from_="sip:alice@example.org"))
        challenge = await alice.final_response()
        assert challenge.status == 407 and challenge.proxy_authenticate
        await alice.close()


@pytest.mark.asyncio
async def test_stray_2xx_retransmission_is_forwarded_statelessly(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        alice = await phone(daemon, "udp")
        bob = await phone(daemon, "udp")
        host, port = address(daemon, "udp")
        ours = f"SIP/2.0/UDP {host}:{port};branch=z9hG4bKgone{secrets.token_hex(4)}"
        theirs = f"SIP/2.0/UDP {alice.local[0]}:{alice.local[1]};branch=z9hG4bKa1"
        ok = Response(
            200,
            "OK",
            Headers(
                [
                    ("Via", ours),
                    ("Via", theirs),
                    ("From", "<sip:alice@example.net>;tag=a"),
                    ("To", "<sip:bob@example.org>;tag=b"),
                    ("Call-ID", "stray-1"),
                    ("CSeq", "1 INVITE"),
                ]
            ),
        )
        bob.send(ok)
        got = await alice.receive()
        assert isinstance(got, Response) and got.status == 200
        assert [v.branch for v in got.vias] == ["z9hG4bKa1"]
        await alice.close()
        await bob.close()


@pytest.mark.asyncio
async def test_in_dialog_request_to_a_gruu_without_route_reaches_the_phone(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        bob = await registered(daemon, uuid=14)
        alice = await phone(daemon, "udp")
        gruu = "sip:bob@example.org;gr=urn:uuid:00000000-0000-0000-0000-000000000014"
        bye = alice.build("BYE", gruu, from_="sip:alice@example.net")
        alice.send(bye.replace(headers=bye.headers.set("To", "<sip:bob@example.org>;tag=t1")))
        got = await bob.next_request("BYE")
        # RFC 5627 §5.3: the GRUU is retargeted to the instance's registered Contact.
        assert got.uri.port == bob.local[1] and got.call_id == bye.call_id
        answer(bob, got, 200, tag="t1")
        assert (await alice.final_response()).status == 200
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_chat_room_invitation_is_pushed_as_an_alert_never_voip(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        await register_asleep(daemon, params=VOIP_PARAMS, uuid=15)
        focus = await phone(daemon, "udp")
        room = "sip:chat-42@conference.example.net"
        request = focus.build(
            "INVITE",
            "sip:bob@example.org",
            [
                ("Contact", f"<sip:chat-42@{focus.local[0]}:{focus.local[1]}>;isfocus"),
                ("Content-Type", "application/resource-lists+xml"),
            ],
            b"<resource-lists/>",
            from_=room,
        )
        focus.send(request)
        (push,) = await pushes.wait_for(1)
        assert push.service is PushService.REMOTE and push.kind is PushKind.MESSAGE
        assert push.chat_room_addr == room and push.call_id == request.call_id
        await focus.close()


@pytest.mark.asyncio
async def test_a_late_phone_that_answers_gets_ack_and_bye(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        await register_asleep(daemon, params=VOIP_PARAMS, uuid=16)
        alice = await phone(daemon, "udp")
        call = invite(alice)
        alice.send(call)
        await pushes.wait_for(1)
        cancel = call.replace(
            method="CANCEL",
            headers=call.headers.set("CSeq", f"{call.cseq.seq} CANCEL").remove("Content-Type"),
            body=b"",
        )
        alice.send(cancel)
        assert {(await alice.final_response()).status for _ in range(2)} == {200, 487}
        woken = await registered(daemon, params=VOIP_PARAMS, uuid=16)
        late = await woken.next_request("INVITE")
        answer(woken, late, 200, tag="too-late")  # answered before the CANCEL could come
        ack = await woken.next_request("ACK")
        bye = await woken.next_request("BYE")
        assert ack.to.tag == bye.to.tag == "too-late"
        assert bye.cseq.seq == late.cseq.seq + 1 and bye.call_id == call.call_id
        await woken.close()
        await alice.close()


@pytest.mark.asyncio
async def test_callee_hangs_up_and_the_bye_reaches_the_caller_over_its_connection(
    tmp_path: Path,
) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        bob = await registered(daemon)
        alice = await phone(daemon, "tcp")
        call = invite(alice)
        alice.send(call)
        forwarded = await bob.next_request("INVITE")
        answer(bob, forwarded, 200, tag="bob")
        assert (await alice.final_response()).status == 200
        # §12.2.1.1: the callee's route set is the Record-Route in order.
        routes = [("Route", v) for v in forwarded.headers.values("Record-Route")]
        bye = bob.build(
            "BYE",
            str(call.contacts[0].uri),
            routes,
            to="sip:alice@example.net",
            from_="sip:bob@example.org",
        )
        bye = bye.replace(
            headers=bye.headers.set("From", "<sip:bob@example.org>;tag=bob").set(
                "To", f"<sip:alice@example.net>;tag={alice.from_tag}"
            )
        )
        bob.send(bye)
        got = await alice.next_request("BYE")
        assert got.call_id == bye.call_id and not got.routes
        answer(alice, got, 200, tag=alice.from_tag)
        assert (await bob.final_response()).status == 200
        await bob.close()
        await alice.close()
