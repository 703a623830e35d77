"""Overload protection: new INVITE / MESSAGE get 503 + Retry-After; the rest still passes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from sipushd.sip import Response
from tests.integration.proxy_helpers import (
    answer,
    config,
    in_dialog,
    invite,
    phone,
    register,
    running,
)


def assert_shed(response: Response) -> None:
    assert response.status == 503
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and int(retry_after) > 0


@pytest.mark.asyncio
async def test_too_many_transactions_sheds_new_calls_and_messages_only(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, _):
        assert daemon.server is not None
        bob = await phone(daemon)
        alice = await phone(daemon, "udp")
        assert (await register(bob, uuid=51)).status == 200
        # A call set up before the overload.
        call = invite(alice)
        alice.send(call)
        forwarded = await bob.next_request("INVITE")
        answer(bob, forwarded, 200)
        ok = await alice.final_response()
        assert ok.status == 200
        alice.send(in_dialog(alice, call, ok, "ACK"))
        await bob.next_request("ACK")

        daemon.server.max_transactions = 0
        alice.send(invite(alice))
        assert_shed(await alice.final_response())
        message = alice.build(
            "MESSAGE",
            "sip:bob@example.org",
            [("Content-Type", "text/plain")],
            b"hello",
            from_="sip:alice@example.net",
        )
        alice.send(message)
        assert_shed(await alice.final_response())
        # REGISTER and in-dialog requests still pass.
        assert (await register(bob, uuid=51)).status == 200
        alice.send(in_dialog(alice, call, ok, "BYE", cseq=call.cseq.seq + 1))
        bye = await bob.next_request("BYE")
        answer(bob, bye, 200)
        assert (await alice.final_response()).status == 200

        daemon.server.max_transactions = 50_000
        alice.send(invite(alice))
        again = await bob.next_request("INVITE")
        answer(bob, again, 486)
        assert (await alice.final_response()).status == 486
        await bob.close()
        await alice.close()


@pytest.mark.asyncio
async def test_a_full_push_queue_sheds_new_calls(tmp_path: Path) -> None:
    async with running(config(tmp_path)) as (daemon, pushes):
        assert daemon.dispatcher is not None
        settings = daemon.dispatcher.settings
        daemon.dispatcher.settings = replace(settings, max_queue=0)
        alice = await phone(daemon, "udp")
        alice.send(invite(alice))
        assert_shed(await alice.final_response())
        assert pushes.pushes == []
        daemon.dispatcher.settings = settings
        alice.send(invite(alice))
        assert (await alice.final_response()).status == 480  # nobody registered
        await alice.close()
