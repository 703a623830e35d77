"""Two sipushd nodes sharing one Redis: bindings, stored MESSAGEs and wake-ups cross nodes.

Each test runs two in-process `Daemon`s (`storage.backend: redis`, one private
`redis-server`, different SIP ports) and talks to them with the shipped test UA. A node
stores its bindings with itself as the first Path entry (RFC 3327), so a request for a
phone whose connection lives in the other node goes through that node and its flow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.core.binding import Binding
from sipushd.sip import Request
from sipushd.store.redis_bindings import RedisBindingStore
from sipushd.testing.mock_pns import MockPushService, write_test_apns_key
from sipushd.testing.ua import SipClient
from tests.integration.proxy_helpers import (
    ALERT_PARAMS,
    VOIP_PARAMS,
    PushRecorder,
    address,
    answer,
    contact_of,
    in_dialog,
    invite,
    phone,
    register,
    registered,
)
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.redis

BOB = "sip:bob@example.org"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path).start()
    try:
        yield server.url
    finally:
        server.stop()


def node_config(redis_url: str, **overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
        "storage": {"backend": "redis", "redis": {"url": redis_url, "key_prefix": "it:"}},
        "push": {"mock": {"enabled": True}},
        "routing": {"call_timeout": 5},
        "admin": {"listen": "127.0.0.1:0"},
        "logging": {"level": "warning"},
    }
    raw.update(overrides)
    return Config.model_validate(raw)


@asynccontextmanager
async def cluster(
    redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[Daemon, Daemon, PushRecorder]]:
    """Nodes A and B on one Redis; A's pushes are recorded."""
    a = Daemon(node_config(redis_url, **overrides))
    b = Daemon(node_config(redis_url, **overrides))
    await a.start()
    try:
        await b.start()
        try:
            assert a.proxy is not None and a.dispatcher is not None
            recorder = PushRecorder(a.dispatcher)
            a.proxy.pushes = recorder
            yield a, b, recorder
        finally:
            await b.stop(0)
    finally:
        await a.stop(0)


@pytest.mark.asyncio
async def test_a_binding_registered_on_one_node_is_listed_by_the_other(redis_url: str) -> None:
    async with cluster(redis_url) as (a, b, _):
        assert isinstance(b.store, RedisBindingStore)
        heard: asyncio.Queue[Binding] = asyncio.Queue()
        await b.store.subscribe(heard.put_nowait)
        ua = await phone(a, "udp")
        ok = await register(ua, uuid=1)
        assert ok.status == 200
        # RFC 3261 §10.3: a REGISTER without Contact lists the AOR's bindings, on any node.
        ua_b = await phone(b, "udp")
        query = ua_b.build("REGISTER", "sip:example.org", [], to=BOB, from_=BOB)
        ua_b.send(query)
        listed = await ua_b.final_response()
        assert listed.status == 200
        assert [str(c.uri) for c in listed.contacts] == [contact_of(ua)]
        (found,) = await b.store.get(BOB, time.time())
        assert found.flow.flow is None  # the flow id is node A's
        # Node A published the registration; node B heard it.
        event = await asyncio.wait_for(heard.get(), 5)
        assert (event.aor, event.contact) == (BOB, contact_of(ua))
        await ua.close()
        await ua_b.close()


@pytest.mark.asyncio
async def test_a_call_held_on_node_a_is_forked_when_the_phone_registers_on_node_b(
    redis_url: str,
) -> None:
    async with cluster(redis_url) as (a, b, pushes):
        asleep = await phone(a)
        assert (await register(asleep, params=VOIP_PARAMS, uuid=1)).status == 200
        await asleep.close()  # the app's connection died with it
        caller = await phone(a, "udp")
        call = invite(caller)
        caller.send(call)
        (push,) = await pushes.wait_for(1)
        assert push.call_id == call.call_id
        # The push woke the phone; it registers over UDP with node B.
        awake = await phone(b, "udp")
        assert (await register(awake, params=VOIP_PARAMS, uuid=1)).status == 200
        forwarded = await awake.next_request("INVITE")
        assert forwarded.call_id == call.call_id
        # A forked through B, the node whose socket the phone's NAT binding points at
        # (its Path entry); the answer goes back the same way (§18.2.2, top Via).
        assert [via.port for via in forwarded.vias[:2]] == [port(b, "udp"), port(a, "udp")]
        answer(awake, forwarded, 200)
        ok = await caller.final_response()
        assert ok.status == 200
        assert a.proxy is not None and a.proxy.held_calls == 0
        await awake.close()
        await caller.close()


def port(node: Daemon, transport: str) -> int:
    return address(node, transport)[1]


def message(sender: SipClient, text: bytes) -> Request:
    return sender.build(
        "MESSAGE", BOB, [("Content-Type", "text/plain")], text, from_="sip:alice@example.net"
    )


@pytest.mark.asyncio
async def test_a_call_at_node_a_reaches_a_tcp_phone_over_its_connection_to_node_b(
    redis_url: str,
) -> None:
    async with cluster(redis_url) as (a, b, _):
        callee = await registered(b, "tcp")  # no push token: forked to at once
        caller = await phone(a, "udp")
        call = invite(caller)
        caller.send(call)
        forwarded = await callee.next_request("INVITE")
        # RFC 3327 §5.3: A loose-routed through B's Path entry; B sent it over the
        # phone's own connection (RFC 5626 §5.3), with no Route left for the phone.
        assert [via.port for via in forwarded.vias[:2]] == [port(b, "tcp"), port(a, "udp")]
        assert "Route" not in forwarded.headers
        answer(callee, forwarded, 200)
        ok = await caller.final_response()
        assert ok.status == 200
        # Both nodes Record-Routed (§16.6 step 4): the dialog keeps going through B.
        assert len(ok.headers.values("Record-Route")) >= 2
        caller.send(in_dialog(caller, call, ok, "ACK"))
        ack = await callee.next_request("ACK")
        assert ack.call_id == call.call_id
        caller.send(in_dialog(caller, call, ok, "BYE", cseq=call.cseq.seq + 1))
        bye = await callee.next_request("BYE")
        answer(callee, bye, 200)
        assert (await caller.final_response()).status == 200
        await callee.close()
        await caller.close()


@pytest.mark.asyncio
async def test_the_phone_on_node_b_hangs_up_through_both_nodes(redis_url: str) -> None:
    async with cluster(redis_url) as (a, b, _):
        callee = await registered(b, "tcp")
        caller = await phone(a, "udp")
        call = invite(caller)
        caller.send(call)
        forwarded = await callee.next_request("INVITE")
        answer(callee, forwarded, 200)
        ok = await caller.final_response()
        caller.send(in_dialog(caller, call, ok, "ACK"))
        await callee.next_request("ACK")
        # §12.2.1.1: the callee's route set is the Record-Route it received, in order.
        routes = [("Route", v) for v in forwarded.headers.values("Record-Route")]
        bye = callee.build("BYE", str(call.contacts[0].uri), routes, call_id=call.call_id)
        headers = bye.headers.set("From", ok.headers.get("To") or "")
        callee.send(bye.replace(headers=headers.set("To", call.headers.get("From") or "")))
        got = await caller.next_request("BYE")
        # B sent it back to A over the flow A used (its token), A on to the caller.
        assert [via.port for via in got.vias[:2]] == [port(a, "udp"), port(b, "udp")]
        answer(caller, got, 200, tag=caller.from_tag)
        assert (await callee.final_response()).status == 200
        await callee.close()
        await caller.close()


@pytest.mark.asyncio
async def test_a_caller_cancel_at_node_a_stops_the_ringing_phone_on_node_b(redis_url: str) -> None:
    async with cluster(redis_url) as (a, b, _):
        callee = await registered(b, "tcp")
        caller = await phone(a, "udp")
        call = invite(caller)
        caller.send(call)
        ringing = await callee.next_request("INVITE")
        answer(callee, ringing, 180)
        reason = 'SIP;cause=487;text="Caller gave up"'
        headers = call.headers.set("CSeq", f"{call.cseq.seq} CANCEL").remove("Content-Type")
        caller.send(Request("CANCEL", call.uri, headers.add("Reason", reason)))
        # §16.10: A CANCELs its branch to B, B its branch over the phone's flow.
        cancel = await callee.next_request("CANCEL")
        assert cancel.top_via.branch == ringing.top_via.branch
        assert cancel.headers.get("Reason") == reason
        answer(callee, cancel, 200)
        answer(callee, ringing, 487)
        finals = {(await caller.final_response()).cseq.method for _ in range(2)}
        assert finals == {"CANCEL", "INVITE"}
        await callee.close()
        await caller.close()


@pytest.mark.asyncio
async def test_a_message_at_node_a_reaches_a_tcp_phone_on_node_b(redis_url: str) -> None:
    async with cluster(redis_url) as (a, b, _):
        callee = await registered(b, "tcp")
        sender = await phone(a, "udp")
        sent = message(sender, b"hello through B")
        sender.send(sent)
        got = await callee.next_request("MESSAGE")
        assert (got.call_id, got.body) == (sent.call_id, b"hello through B")
        assert got.top_via.port == port(b, "tcp")
        answer(callee, got, 200)
        assert (await sender.final_response()).status == 200
        await callee.close()
        await sender.close()


@pytest.mark.asyncio
async def test_the_node_holding_the_flow_is_not_routed_through_itself(redis_url: str) -> None:
    async with cluster(redis_url) as (a, b, _):
        callee = await registered(a, "tcp")
        # The shared binding leads other nodes through A ...
        assert b.store is not None and a.store is not None
        (seen,) = await b.store.get(BOB, time.time())
        assert seen.path and f"127.0.0.1:{port(a, 'udp')};lr" in seen.path[0]
        # ... while A itself reads it without its own entry and uses the flow directly.
        (own,) = await a.store.get(BOB, time.time())
        assert own.path == () and own.flow.flow is not None
        caller = await phone(a, "udp")
        caller.send(invite(caller))
        forwarded = await callee.next_request("INVITE")
        assert [via.port for via in forwarded.vias] == [port(a, "tcp"), caller.local[1]]
        assert "Route" not in forwarded.headers
        answer(callee, forwarded, 486)
        assert (await caller.final_response()).status == 486
        await callee.close()
        await caller.close()


@pytest.mark.asyncio
async def test_a_call_for_a_phone_whose_connection_to_node_b_closed_gets_480(
    redis_url: str,
) -> None:
    async with cluster(redis_url) as (a, b, _):
        callee = await registered(b, "tcp")
        assert b.store is not None and b.transport is not None
        (binding,) = await b.store.get(BOB, time.time())
        await callee.close()
        async with asyncio.timeout(5):
            while b.transport.flow_alive(binding.flow):  # noqa: ASYNC110 (no event to wait on)
                await asyncio.sleep(0.01)
        caller = await phone(a, "udp")
        caller.send(invite(caller))
        # RFC 5626 §5.3: B answers 430 Flow Failed; A gives the caller 480 (§11).
        assert (await caller.final_response()).status == 480
        await caller.close()


@pytest.mark.asyncio
async def test_two_nodes_send_a_binding_refresh_push_once(redis_url: str, tmp_path: Path) -> None:
    key = write_test_apns_key(tmp_path / "AuthKey_KEY1234567.p8")
    async with MockPushService(tmp_path / "pns") as pns:
        app = {"team_id": "ABCD1234", "bundle_id": "org.example.app", "key_id": "KEY1234567"}
        app |= {"key_file": str(key), "endpoint": pns.base_url, "ca_file": str(pns.ca_file)}
        async with cluster(redis_url, push={"apns": [app]}) as (a, b, _):
            # A push binding without +sip.pnsreg: sipushd wakes it before it expires.
            ua = await registered(b, "tcp", params=ALERT_PARAMS, uuid=3)
            assert a.refresher is not None and b.refresher is not None
            later = time.time() + 500  # within the last 150 s of its 600 s
            a.refresher.clock = b.refresher.clock = lambda: later
            # Both nodes scan the shared store at once; the Redis claim picks one sender.
            sent = await asyncio.gather(a.refresher.tick(), b.refresher.tick())
            assert sorted(sent) == [0, 1]
            push = await pns.wait_for_push()
            assert (push.token, push.push_type) == ("44ee55ff", "background")
            assert a.dispatcher is not None and b.dispatcher is not None
            async with asyncio.timeout(5):
                while a.dispatcher.stats.in_flight or b.dispatcher.stats.in_flight:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
            assert len(pns.pushes) == 1
            # Later scans inside the same window send nothing more, on either node.
            assert await a.refresher.tick() + await b.refresher.tick() == 0
            assert len(pns.pushes) == 1
            await ua.close()
