"""A CANCEL that matches no transaction is forwarded statelessly (RFC 3261 §16.10, §16.11)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipushd.core.proxy import stateless_branch
from sipushd.sip import Request
from sipushd.testing.ua import SipClient
from tests.integration.proxy_helpers import (
    answer,
    config,
    invite,
    no_request,
    phone,
    registered,
    running,
    running_with_upstream,
)


def cancel_of(call: Request) -> Request:
    headers = call.headers.set("CSeq", f"{call.cseq.seq} CANCEL")
    return Request("CANCEL", call.uri, headers.remove("Content-Type").remove("Contact"))


async def forwarded_cancel(alice: SipClient, bob: SipClient) -> tuple[Request, Request]:
    """Alice CANCELs an INVITE the proxy never saw; bob gets it: (sent, received)."""
    cancel = cancel_of(invite(alice))
    alice.send(cancel)
    return cancel, await bob.next_request("CANCEL")


@pytest.mark.asyncio
@pytest.mark.parametrize("status", [481, 200])
async def test_the_next_hop_answers_the_stray_cancel(tmp_path: Path, status: int) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        bob = await registered(daemon, uuid=61)
        alice = await phone(daemon, "udp")
        sent, received = await forwarded_cancel(alice, bob)
        assert received.call_id == sent.call_id and received.cseq == sent.cseq
        assert len(received.vias) == 2 and received.max_forwards == 69
        # §16.11: the branch comes from the received one, as its INVITE's would have.
        assert received.top_via.branch == stateless_branch(sent)
        assert not received.record_routes
        answer(bob, received, status)
        final = await alice.final_response()
        assert final.status == status and final.cseq.method == "CANCEL"
        assert final.to.tag == "callee", "the next hop's answer, not one of ours"
        assert len(final.vias) == 1
        assert daemon.proxy is not None and daemon.proxy.held_calls == 0
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_over_udp_the_stray_cancel_is_sent_again_until_answered(tmp_path: Path) -> None:
    cfg = config(tmp_path, sip={"timers": {"t1": 0.05}}, routing={"message_accept_timeout": 0.3})
    async with running(cfg) as (daemon, _):
        bob = await registered(daemon, "udp", uuid=62)
        alice = await phone(daemon, "udp")
        _, first = await forwarded_cancel(alice, bob)
        again = await bob.next_request("CANCEL")
        assert again.top_via.branch == first.top_via.branch
        answer(bob, again, 200)
        assert (await alice.final_response()).status == 200
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_an_unanswered_stray_cancel_frees_its_transaction_after_64_t1(
    tmp_path: Path,
) -> None:
    cfg = config(tmp_path, sip={"timers": {"t1": 0.01}}, routing={"message_accept_timeout": 0.3})
    async with running(cfg) as (daemon, _):
        bob = await registered(daemon, uuid=63)
        alice = await phone(daemon)
        await forwarded_cancel(alice, bob)
        assert (await alice.final_response(timeout=5)).status == 408
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("target", "sender"),
    [
        ("sip:nobody@example.org", "sip:alice@example.net"),  # no binding
        ("sip:carol@elsewhere.example", "sip:mallory@elsewhere.example"),  # not a relay
        ("sip:carol@elsewhere.example", "sip:alice@example.org"),  # no upstream
    ],
)
async def test_a_stray_cancel_with_no_target_gets_481(
    tmp_path: Path, target: str, sender: str
) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        bob = await registered(daemon, uuid=64)
        alice = await phone(daemon, "udp")
        call = invite(alice, target)
        call = call.replace(headers=call.headers.set("From", f"<{sender}>;tag=f1"))
        alice.send(cancel_of(call))
        assert (await alice.final_response()).status == 481
        assert await no_request(bob, "CANCEL")
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_a_local_callers_stray_cancel_goes_upstream(tmp_path: Path) -> None:
    async with running_with_upstream(tmp_path) as (daemon, pbx, upstream):
        alice = await phone(daemon, "udp")
        call = alice.build("INVITE", "sip:carol@elsewhere.example", from_="sip:alice@example.org")
        alice.send(cancel_of(call))
        out = await pbx.next_request("CANCEL")
        assert str(out.uri) == "sip:carol@elsewhere.example"
        assert str(out.routes[0].uri) == f"{upstream};lr"
        answer(pbx, out, 200)
        assert (await alice.final_response()).status == 200
        await alice.close()
