"""MESSAGE store-and-forward through a real daemon on loopback (RFC 3428, RFC 8599 §5.6.2).

The phone is a `SipClient` registered over TCP; "asleep" means its connection is gone.
Pushes go through the in-process mock provider; a PushRecorder in front of the dispatcher
keeps what the MESSAGE service submitted, and can make every push fail.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sipushd import metrics
from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.core.payload import PushKind, PushService, build_apns
from sipushd.push.base import PushOutcome
from sipushd.sip import Request
from sipushd.testing.ua import SipClient
from tests.integration.proxy_helpers import PushRecorder, address

AOR = "sip:bob@example.org"
ALERT = "pn-provider=apns;pn-param=ABCD1234.org.example.app;pn-prid={token}"


def make_config(db: Path | str = ":memory:", **routing: Any) -> Config:
    return Config.model_validate(
        {
            "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
            "storage": {"sqlite": {"path": str(db)}},
            "push": {"mock": {"enabled": True}},
            "routing": {"message_accept_timeout": 0.3, **routing},
            "admin": {"listen": "127.0.0.1:0"},
        }
    )


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[tuple[Daemon, PushRecorder]]:
    daemon = Daemon(config)
    await daemon.start()
    assert daemon.messages is not None and daemon.dispatcher is not None
    pushes = PushRecorder(daemon.dispatcher, failure=(PushOutcome.FAILED, 503, "down"))
    daemon.messages.push = pushes.submit
    try:
        yield daemon, pushes
    finally:
        await daemon.stop(0)


async def connect(daemon: Daemon, transport: str = "tcp") -> SipClient:
    return await SipClient.connect(transport, address(daemon, transport))


def token(uuid: int) -> str:
    return f"44ee55{uuid:02x}"


async def register(phone: SipClient, *, uuid: int = 1, push: bool = True) -> None:
    host, port = phone.local
    # One token per device: the registrar replaces a binding whose token is reused.
    params = ";" + ALERT.format(token=token(uuid)) if push else ""
    contact = (
        f"<sip:bob@{host}:{port};transport={phone.transport_name}{params}>"
        f';+sip.instance="<urn:uuid:00000000-0000-0000-0000-{uuid:012d}>"'
    )
    request = phone.build(
        "REGISTER",
        "sip:example.org",
        [("Contact", contact), ("Expires", "600")],
        to=AOR,
        from_=AOR,
    )
    phone.send(request)
    response = await phone.final_response()
    assert response.status == 200, response


async def registered(daemon: Daemon, *, uuid: int = 1, push: bool = True) -> SipClient:
    """A phone connected over TCP and registered as `uuid`."""
    phone = await connect(daemon)
    await register(phone, uuid=uuid, push=push)
    return phone


def send_message(
    sender: SipClient, body: bytes = b"hello", content_type: str = "text/plain"
) -> Request:
    request = sender.build(
        "MESSAGE",
        AOR,
        [("Content-Type", content_type)],
        body,
        from_="sip:alice@example.net",
        call_id=f"msg-{time.monotonic_ns()}",
    )
    sender.send(request)
    return request


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():  # noqa: ASYNC110 (polls the store; no event to wait on)
            await asyncio.sleep(0.01)


async def stored(daemon: Daemon) -> int:
    assert daemon.message_store is not None
    return await daemon.message_store.total(time.time())


async def fall_asleep(daemon: Daemon, phone: SipClient) -> None:
    """Close the phone's connection and wait until the daemon has seen it go."""
    await phone.close()
    assert daemon.store is not None and daemon.transport is not None
    transport = daemon.transport

    async def gone() -> bool:
        assert daemon.store is not None
        bindings = await daemon.store.get(AOR, time.time())
        return not any(transport.flow_alive(b.flow) for b in bindings)

    await until(gone)


async def asleep(daemon: Daemon, *, uuid: int = 1) -> None:
    """A phone that registers with a push token, then goes away (its connection closed)."""
    await fall_asleep(daemon, await registered(daemon, uuid=uuid))


async def send_stored(daemon: Daemon, body: bytes = b"hello") -> Request:
    """Send a MESSAGE from a UDP sender and expect it stored for later: 202 (RFC 3428 §7)."""
    async with await connect(daemon, "udp") as sender:
        sent = send_message(sender, body)
        assert (await sender.final_response()).status == 202
    return sent


async def no_request(ua: SipClient, wait: float = 0.3) -> bool:
    try:
        await ua.next_request("MESSAGE", timeout=wait)
    except TimeoutError:
        return True
    return False


async def refresh_brings_nothing(phone: SipClient, *, uuid: int = 1, push: bool = True) -> bool:
    """Register again (a refresh) and see no MESSAGE come: nothing is left to deliver."""
    await register(phone, uuid=uuid, push=push)
    return await no_request(phone)


def deliveries(result: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "sipushd_message_deliveries_total", {"result": result}
    )
    return value or 0.0


@pytest.mark.asyncio
async def test_an_online_phone_gets_the_message_and_its_200_reaches_the_sender() -> None:
    async with running(make_config()) as (daemon, pushes):
        phone = await registered(daemon, push=False)
        async with await connect(daemon, "udp") as sender:
            sent = send_message(sender)
            got = await phone.next_request("MESSAGE")
            phone.answer(got, 200)
            response = await sender.final_response()
        await phone.close()
        assert response.status == 200
        assert got.body == b"hello" and got.call_id == sent.call_id
        assert got.max_forwards == 69
        assert len(got.vias) == 2, "our Via on top of the sender's (RFC 3261 §16.6)"
        assert pushes.pushes == []
        await until(lambda: _equals(stored(daemon), 0))


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.asyncio
async def test_a_sleeping_phone_is_pushed_gets_202_then_the_message_once_it_registers() -> None:
    async with running(make_config()) as (daemon, pushes):
        await asleep(daemon)
        async with await connect(daemon, "udp") as sender:
            sent = send_message(sender, b"are you there?")
            (push,) = await pushes.wait_for(1)
            response = await sender.final_response()
        assert response.status == 202
        assert (push.kind, push.service, push.token) == (
            PushKind.MESSAGE,
            PushService.REMOTE,
            token(1),
        )
        assert push.call_id == sent.call_id
        assert build_apns(push, time.time()).payload["call_id"] == sent.call_id
        assert await stored(daemon) == 1

        phone = await registered(daemon)
        got = await phone.next_request("MESSAGE")
        assert (got.body, got.call_id, got.content_type) == (
            b"are you there?",
            sent.call_id,
            "text/plain",
        )
        assert got.from_.uri == sent.from_.uri and got.to.uri == sent.to.uri
        assert got.headers.get("Date"), "the arrival time is kept (RFC 3261 §20.17)"
        assert got.max_forwards == 69 and len(got.vias) == 1, "a new request with our Via"
        phone.answer(got, 200)
        await until(lambda: _equals(stored(daemon), 0))

        assert await refresh_brings_nothing(phone)
        await phone.close()


@pytest.mark.asyncio
async def test_a_phone_waking_within_the_accept_time_answers_the_sender_itself() -> None:
    async with running(make_config(message_accept_timeout=5)) as (daemon, pushes):
        await asleep(daemon)
        async with await connect(daemon, "udp") as sender:
            send_message(sender)
            await pushes.wait_for(1)
            phone = await registered(daemon)
            phone.answer(await phone.next_request("MESSAGE"), 200)
            response = await sender.final_response()
        await phone.close()
        assert response.status == 200, "the woken phone's 200, not a 202"
        await until(lambda: _equals(stored(daemon), 0))


@pytest.mark.asyncio
async def test_stored_messages_arrive_in_order_one_at_a_time() -> None:
    async with running(make_config()) as (daemon, _pushes):
        await asleep(daemon)
        async with await connect(daemon, "udp") as sender:
            for text in (b"one", b"two", b"three"):
                send_message(sender, text)
                assert (await sender.final_response()).status == 202
        phone = await registered(daemon)
        bodies = []
        for _ in range(3):
            got = await phone.next_request("MESSAGE")
            assert await no_request(phone, 0.1), "the next one waits for this answer"
            bodies.append(got.body)
            phone.answer(got, 200)
        await phone.close()
        assert bodies == [b"one", b"two", b"three"]


@pytest.mark.asyncio
async def test_every_device_gets_it_even_after_another_one_answered() -> None:
    async with running(make_config()) as (daemon, pushes):
        desk = await registered(daemon, uuid=1, push=False)
        phone = await registered(daemon, uuid=2)
        await fall_asleep_one(daemon, phone)
        async with await connect(daemon, "udp") as sender:
            send_message(sender)
            desk.answer(await desk.next_request("MESSAGE"), 200)
            assert (await sender.final_response()).status == 200
        assert len(await pushes.wait_for(1)) == 1
        assert await stored(daemon) == 1, "kept for the phone"
        phone = await registered(daemon, uuid=2)
        phone.answer(await phone.next_request("MESSAGE"), 200)
        await until(lambda: _equals(stored(daemon), 0))
        assert await refresh_brings_nothing(desk, uuid=1, push=False)
        await desk.close()
        await phone.close()


async def fall_asleep_one(daemon: Daemon, phone: SipClient) -> None:
    """Close one phone's connection (others stay) and wait until its flow is gone."""
    port = phone.local[1]
    await phone.close()
    assert daemon.store is not None and daemon.transport is not None
    transport = daemon.transport

    async def gone() -> bool:
        assert daemon.store is not None
        bindings = await daemon.store.get(AOR, time.time())
        mine = [b for b in bindings if f":{port};" in b.contact]
        return bool(mine) and not transport.flow_alive(mine[0].flow)

    await until(gone)


@pytest.mark.asyncio
async def test_a_retry_answer_keeps_it_and_a_refusal_ends_it() -> None:
    async with running(make_config()) as (daemon, _pushes):
        await asleep(daemon)
        await send_stored(daemon)
        phone = await registered(daemon)
        phone.answer(await phone.next_request("MESSAGE"), 480)
        await register(phone)
        phone.answer(await phone.next_request("MESSAGE"), 415)  # sent again after 480
        await until(lambda: _equals(stored(daemon), 0))
        assert await refresh_brings_nothing(phone)
        await phone.close()


@pytest.mark.asyncio
async def test_is_composing_to_a_sleeping_phone_gets_480_and_is_neither_stored_nor_pushed() -> None:
    async with running(make_config()) as (daemon, pushes):
        await asleep(daemon)
        async with await connect(daemon, "udp") as sender:
            send_message(sender, b"<isComposing/>", "application/im-iscomposing+xml")
            response = await sender.final_response()
        assert response.status == 480
        assert pushes.pushes == []
        assert await stored(daemon) == 0


@pytest.mark.asyncio
async def test_is_composing_reaches_an_online_phone() -> None:
    async with running(make_config()) as (daemon, pushes):
        phone = await registered(daemon)
        async with await connect(daemon, "udp") as sender:
            send_message(sender, b"<imdn/>", "message/imdn+xml")
            phone.answer(await phone.next_request("MESSAGE"), 200)
            assert (await sender.final_response()).status == 200
        await phone.close()
        assert await stored(daemon) == 0 and pushes.pushes == []


@pytest.mark.asyncio
async def test_an_aor_without_bindings_gets_480_at_once() -> None:
    async with running(make_config()) as (daemon, _pushes):
        async with await connect(daemon, "udp") as sender:
            send_message(sender)
            response = await sender.final_response()
        assert response.status == 480
        assert await stored(daemon) == 0


@pytest.mark.asyncio
async def test_past_the_per_aor_limit_the_sender_gets_486() -> None:
    async with running(make_config(max_stored_messages_per_aor=1)) as (daemon, _pushes):
        await asleep(daemon)
        before = deliveries("rejected")
        async with await connect(daemon, "udp") as sender:
            send_message(sender, b"first")
            assert (await sender.final_response()).status == 202
            send_message(sender, b"second")
            refused = await sender.final_response()
        assert (refused.status, refused.reason) == (486, "Message Store Full")
        assert deliveries("rejected") == before + 1
        assert await stored(daemon) == 1


@pytest.mark.asyncio
async def test_a_failing_push_provider_loses_nothing() -> None:
    async with running(make_config()) as (daemon, pushes):
        pushes.fail = True
        await asleep(daemon)
        await send_stored(daemon, b"still here")
        assert len(pushes.pushes) == 1
        phone = await registered(daemon)
        got = await phone.next_request("MESSAGE")
        phone.answer(got, 200)
        await phone.close()
        assert got.body == b"still here"


@pytest.mark.asyncio
async def test_a_restart_loses_nothing(tmp_path: Path) -> None:
    config = make_config(tmp_path / "sipushd.db")
    async with running(config) as (daemon, pushes):
        await asleep(daemon)
        sent = await send_stored(daemon, b"before the restart")
        assert [p.call_id for p in pushes.pushes] == [sent.call_id]
    async with running(config) as (daemon, _pushes):
        assert await stored(daemon) == 1
        phone = await registered(daemon)
        got = await phone.next_request("MESSAGE")
        assert (got.body, got.call_id) == (b"before the restart", sent.call_id)
        phone.answer(got, 200)
        await until(lambda: _equals(stored(daemon), 0))
        assert await refresh_brings_nothing(phone)
        await phone.close()


@pytest.mark.asyncio
async def test_a_device_registering_for_the_first_time_gets_a_message_still_stored() -> None:
    async with running(make_config()) as (daemon, _pushes):
        await asleep(daemon, uuid=1)
        await send_stored(daemon, b"for every device")
        tablet = await registered(daemon, uuid=3)
        got = await tablet.next_request("MESSAGE")
        tablet.answer(got, 200)
        assert got.body == b"for every device"
        assert await refresh_brings_nothing(tablet, uuid=3)
        assert await stored(daemon) == 1, "still kept for the phone it was sent to"
        await tablet.close()


@pytest.mark.asyncio
async def test_a_message_resent_in_a_new_transaction_is_stored_once() -> None:
    async with running(make_config()) as (daemon, _pushes):
        await asleep(daemon)
        async with await connect(daemon, "udp") as sender:
            first = send_message(sender)
            assert (await sender.final_response()).status == 202
            # Same Call-ID, CSeq and From tag, new branch: the same MESSAGE again.
            again = sender.build(
                "MESSAGE",
                AOR,
                [("Content-Type", "text/plain")],
                first.body,
                from_="sip:alice@example.net",
                call_id=first.call_id,
                cseq=first.cseq.seq,
            )
            sender.send(again)
            assert (await sender.final_response()).status == 202
        assert await stored(daemon) == 1


@pytest.mark.asyncio
async def test_a_stopping_daemon_answers_202_for_a_stored_message_still_waiting() -> None:
    daemon = Daemon(make_config(message_accept_timeout=20))
    await daemon.start()
    try:
        await asleep(daemon)
        async with await connect(daemon, "udp") as sender:
            send_message(sender)
            await until(lambda: _equals(stored(daemon), 1))
            stopping = asyncio.create_task(daemon.stop(0))
            response = await sender.final_response()
            await stopping
    finally:
        await daemon.stop(0)
    assert response.status == 202


@pytest.mark.asyncio
async def test_expired_messages_are_purged_and_never_delivered() -> None:
    async with running(make_config(message_delivery_timeout=60)) as (daemon, _pushes):
        assert daemon.messages is not None
        await asleep(daemon)
        await send_stored(daemon)
        before = deliveries("expired")
        daemon.messages.clock = lambda: time.time() + 61
        assert await daemon.messages.purge() == 1
        assert deliveries("expired") == before + 1
        assert metrics.REGISTRY.get_sample_value("sipushd_stored_messages") == 0
        phone = await registered(daemon)
        assert await no_request(phone)
        await phone.close()


@pytest.mark.asyncio
async def test_a_message_to_a_gruu_is_kept_for_that_device_only() -> None:
    async with running(make_config()) as (daemon, pushes):
        tablet = await registered(daemon, uuid=2)
        await fall_asleep_one(daemon, tablet)
        phone = await registered(daemon, uuid=1)
        await fall_asleep_one(daemon, phone)
        gruu = f"{AOR};gr=urn:uuid:00000000-0000-0000-0000-000000000001"
        async with await connect(daemon, "udp") as sender:
            request = sender.build(
                "MESSAGE",
                gruu,
                [("Content-Type", "text/plain")],
                b"just the phone",
                to=AOR,
                from_="sip:alice@example.net",
            )
            sender.send(request)
            assert (await sender.final_response()).status == 202
        assert [p.token for p in await pushes.wait_for(1)] == [token(1)]
        assert len(pushes.pushes) == 1, "one device woken, not two"
        tablet = await registered(daemon, uuid=2)
        assert await no_request(tablet)
        phone = await registered(daemon, uuid=1)
        got = await phone.next_request("MESSAGE")
        phone.answer(got, 200)
        assert got.body == b"just the phone"
        await until(lambda: _equals(stored(daemon), 0))
        await tablet.close()
        await phone.close()


@pytest.mark.asyncio
async def test_a_route_to_us_is_removed_and_other_domains_go_to_the_proxy() -> None:
    async with running(make_config()) as (daemon, _pushes):
        phone = await registered(daemon)
        host, port = address(daemon, "udp")
        async with await connect(daemon, "udp") as sender:
            routed = sender.build(
                "MESSAGE",
                AOR,
                [("Route", f"<sip:{host}:{port};lr>"), ("Content-Type", "text/plain")],
                b"via our outbound proxy",
                from_="sip:alice@example.net",
            )
            sender.send(routed)
            got = await phone.next_request("MESSAGE")
            phone.answer(got, 200)
            assert (await sender.final_response()).status == 200
            assert got.headers.get("Route") is None
            # Not ours and not from a local user: the proxy will not relay it.
            foreign = sender.build(
                "MESSAGE", "sip:carol@example.net", from_="sip:alice@example.net"
            )
            sender.send(foreign)
            assert (await sender.final_response()).status == 403
        await phone.close()
