"""Timer C (RFC 3261 §16.6 step 11, §16.8): a branch that rings too long is CANCELled, 408."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from sipushd.app import Daemon
from sipushd.testing.ua import SipClient
from tests.integration.proxy_helpers import (
    answer,
    config,
    invite,
    no_request,
    phone,
    registered,
    running,
)


@asynccontextmanager
async def ringing_bob(
    tmp_path: Path, timer_c: float
) -> AsyncIterator[tuple[Daemon, SipClient, SipClient]]:
    # call_timeout is longer than Timer C: the case where Timer C decides (§16.8).
    async with running(config(tmp_path, routing={"call_timeout": 30})) as (daemon, _):
        assert daemon.proxy is not None
        daemon.proxy.settings = replace(daemon.proxy.settings, timer_c=timer_c)
        bob = await registered(daemon, uuid=41)
        alice = await phone(daemon, "udp")
        try:
            yield daemon, bob, alice
        finally:
            await bob.close()
            await alice.close()


@pytest.mark.asyncio
async def test_timer_c_cancels_a_ringing_branch_and_the_caller_gets_408(tmp_path: Path) -> None:
    async with ringing_bob(tmp_path, 0.3) as (daemon, bob, alice):
        alice.send(invite(alice))
        forwarded = await bob.next_request("INVITE")
        answer(bob, forwarded, 180)
        cancel = await bob.next_request("CANCEL", timeout=5)
        assert cancel.top_via.branch == forwarded.top_via.branch
        final = await alice.final_response(timeout=5)
        assert final.status == 408 and final.cseq.method == "INVITE"
        # The phone's answers to the CANCEL change nothing for the caller.
        answer(bob, cancel, 200)
        answer(bob, forwarded, 487)
        assert daemon.proxy is not None and daemon.proxy.held_calls == 0


@pytest.mark.asyncio
async def test_each_provisional_restarts_timer_c(tmp_path: Path) -> None:
    async with ringing_bob(tmp_path, 0.6) as (_, bob, alice):
        alice.send(invite(alice))
        forwarded = await bob.next_request("INVITE")
        for status in (180, 183, 180, 183):
            answer(bob, forwarded, status)
            assert await no_request(bob, "CANCEL", wait=0.2)
        cancel = await bob.next_request("CANCEL", timeout=5)
        answer(bob, cancel, 200)
        answer(bob, forwarded, 487)
        assert (await alice.final_response(timeout=5)).status == 408


@pytest.mark.asyncio
async def test_an_answer_before_timer_c_stops_it(tmp_path: Path) -> None:
    async with ringing_bob(tmp_path, 0.3) as (_, bob, alice):
        alice.send(invite(alice))
        forwarded = await bob.next_request("INVITE")
        answer(bob, forwarded, 180)
        answer(bob, forwarded, 486)
        assert (await alice.final_response()).status == 486
        assert await no_request(bob, "CANCEL", wait=0.5)
