"""Redis store specifics: nodes sharing a server, flow ids, events, durability, outages.

The contract suites cover the `BindingStore` / `MessageStore` rules; here two store
objects on one server stand for two sipushd nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from sipushd.core.binding import Binding
from sipushd.core.cluster import ClusterPaths
from sipushd.core.messages import StoredMessage
from sipushd.core.proxy import LocalAddress, decode_flow_token
from sipushd.core.pushparams import PushTarget
from sipushd.sip import Endpoint
from sipushd.sip.headers import parse_name_addr
from sipushd.store.base import StoreError
from sipushd.store.messages import MessageLimitError
from sipushd.store.redis_bindings import RedisBindingStore
from sipushd.store.redis_messages import RedisMessageStore
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.redis

AOR = "sip:alice@example.org"
NOW = 10_000.0
FCM = PushTarget("fcm", False, "my-project", None, (("remote", "tok-fcm"),))


def binding(key: str, **changes: object) -> Binding:
    fields: dict[str, object] = {
        "aor": AOR,
        "key": key,
        "contact": f"sip:{key}@192.0.2.10;transport=tcp",
        "expires_at": NOW + 3600,
        "call_id": f"call-{key}",
        "cseq": 1,
        "flow": Endpoint("tcp", "192.0.2.10", 40000, 7),
        "registered_at": NOW,
        "updated_at": NOW,
    }
    fields.update(changes)
    return Binding(**fields)  # type: ignore[arg-type]


def message(number: int) -> StoredMessage:
    return StoredMessage(
        id=f"m{number}",
        aor=AOR,
        call_id=f"call-{number}",
        sender="sip:carol@example.net",
        arrived_at=NOW,
        expires_at=NOW + 600,
        data=b"MESSAGE sip:alice@example.org SIP/2.0\r\n\r\n\x00\xff",
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    running = RedisServer(tmp_path, appendonly=True).start()
    try:
        yield running
    finally:
        running.stop()


@pytest_asyncio.fixture
async def nodes(server: RedisServer) -> AsyncIterator[tuple[RedisBindingStore, RedisBindingStore]]:
    a = await RedisBindingStore.open(server.url, "cluster:")
    b = await RedisBindingStore.open(server.url, "cluster:")
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


@pytest.mark.asyncio
async def test_a_node_keeps_its_own_flow_ids_and_drops_the_others(
    nodes: tuple[RedisBindingStore, RedisBindingStore],
) -> None:
    a, b = nodes
    await a.apply(AOR, [binding("phone", push=FCM)], [])
    (mine,) = await a.get(AOR, NOW)
    (theirs,) = await b.get(AOR, NOW)
    assert mine.flow.flow == 7
    assert theirs == mine.replace(flow=Endpoint("tcp", "192.0.2.10", 40000, None))
    # B drops the dead token; A still knows the flow it wrote.
    (updated,) = await b.remove_token("tok-fcm")
    assert updated.flow.flow is None and updated.push is None
    (mine,) = await a.get(AOR, NOW)
    assert mine.flow.flow == 7 and mine.push is None


@pytest.mark.asyncio
async def test_a_node_writes_itself_first_in_the_path_and_reads_past_itself(
    nodes: tuple[RedisBindingStore, RedisBindingStore],
) -> None:
    a, b = nodes
    a.paths = ClusterPaths(LocalAddress("udp", "10.0.0.1", 5060), b"a" * 32)
    b.paths = ClusterPaths(LocalAddress("udp", "10.0.0.2", 5060), b"b" * 32)
    heard = Heard()
    await b.subscribe(heard)
    edge = "<sip:edge.example.net;lr>"
    await a.apply(AOR, [binding("phone", path=(edge,))], [])
    # RFC 3327: B reaches the phone through A's entry, then the UA's own Path.
    (theirs,) = await b.get(AOR, NOW)
    assert theirs.path[0].endswith("@10.0.0.1:5060;lr>") and theirs.path[1:] == (edge,)
    flows = decode_flow_token(parse_name_addr(theirs.path[0]).uri.user or "", b"a" * 32)
    assert flows is not None and flows.callee == binding("phone").flow
    await heard.wait_for(1)
    assert heard.bindings[0].path == theirs.path
    # A reads its binding as it stored it: its own flow, no entry of its own.
    (mine,) = await a.get(AOR, NOW)
    assert mine == binding("phone", path=(edge,))


@pytest.mark.asyncio
async def test_one_node_wins_each_refresh_claim(
    nodes: tuple[RedisBindingStore, RedisBindingStore],
) -> None:
    a, b = nodes
    phone = binding("phone", push=FCM)
    claims = await asyncio.gather(a.claim_refresh(phone, NOW), b.claim_refresh(phone, NOW))
    assert sorted(claims) == [False, True]
    assert not await a.claim_refresh(phone, NOW + 10), "claimed until it expires"
    # The refreshed binding (a new expiry) is a new version to push.
    renewed = phone.replace(expires_at=NOW + 7200)
    assert await b.claim_refresh(renewed, NOW + 10)


class Heard:
    """A subscriber that records the bindings it hears about."""

    def __init__(self) -> None:
        self.bindings: list[Binding] = []
        self._arrived = asyncio.Event()

    def __call__(self, found: Binding) -> None:
        self.bindings.append(found)
        self._arrived.set()

    async def wait_for(self, count: int) -> list[str]:
        async with asyncio.timeout(5):
            while len(self.bindings) < count:
                self._arrived.clear()
                await self._arrived.wait()
        return [b.key for b in self.bindings]


@pytest.mark.asyncio
async def test_registration_events_reach_the_other_nodes_only(
    nodes: tuple[RedisBindingStore, RedisBindingStore],
) -> None:
    a, b = nodes
    heard_a, heard_b = Heard(), Heard()
    await a.subscribe(heard_a)
    await b.subscribe(heard_b)
    await a.apply(AOR, [binding("old")], [])
    await a.apply(AOR, [], ["old"])  # a removal is not a registration
    await a.apply(AOR, [binding("phone"), binding("tablet")], [])
    assert await heard_b.wait_for(3) == ["old", "phone", "tablet"]
    assert all(x.flow.flow is None for x in heard_b.bindings)
    # A skips its own events: B's later event arrives alone (one channel keeps order).
    await b.apply(AOR, [binding("b-phone")], [])
    assert await heard_a.wait_for(1) == ["b-phone"]


@pytest.mark.asyncio
async def test_the_message_limit_holds_across_nodes(server: RedisServer) -> None:
    stores = [await RedisMessageStore.open(server.url, "cluster:") for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(stores[n % 3].add(message(n), ["phone"], limit=4, now=NOW) for n in range(12)),
            return_exceptions=True,
        )
        assert sum(isinstance(r, MessageLimitError) for r in results) == 8
        assert await stores[0].count(AOR, NOW) == 4
    finally:
        for store in stores:
            await store.close()


@pytest.mark.asyncio
async def test_bindings_and_messages_survive_a_redis_restart_with_appendonly(
    server: RedisServer,
) -> None:
    bindings = await RedisBindingStore.open(server.url, "p:")
    messages = await RedisMessageStore.open(server.url, "p:")
    await bindings.apply(AOR, [binding("phone", push=FCM)], [])
    await messages.add(message(1), ["phone", "tablet"], limit=10, now=NOW)
    await messages.mark_done("m1", "phone")
    await bindings.close()
    await messages.close()
    server.stop()
    server.start()
    bindings = await RedisBindingStore.open(server.url, "p:")
    messages = await RedisMessageStore.open(server.url, "p:")
    try:
        assert [b.key for b in await bindings.with_token("tok-fcm", NOW)] == ["phone"]
        assert await messages.get("m1") == message(1)
        assert await messages.waiting("m1") == ["tablet"]
    finally:
        await bindings.close()
        await messages.close()


@pytest.mark.asyncio
async def test_a_server_that_goes_away_gives_store_errors(server: RedisServer) -> None:
    bindings = await RedisBindingStore.open(server.url, "p:")
    messages = await RedisMessageStore.open(server.url, "p:")
    server.stop()
    try:
        with pytest.raises(StoreError):
            await bindings.apply(AOR, [binding("phone")], [])
        with pytest.raises(StoreError):
            await bindings.get(AOR, NOW)
        with pytest.raises(StoreError):
            await messages.add(message(1), ["phone"], limit=10, now=NOW)
    finally:
        await bindings.close()
        await messages.close()
    with pytest.raises(StoreError, match="connecting"):
        await RedisBindingStore.open(server.url, "p:")


@pytest.mark.asyncio
async def test_events_resume_after_a_redis_restart(
    server: RedisServer, nodes: tuple[RedisBindingStore, RedisBindingStore]
) -> None:
    a, b = nodes
    heard: asyncio.Queue[Binding] = asyncio.Queue()
    await b.subscribe(heard.put_nowait)
    server.stop()
    server.start()
    # The first command on a connection that died fails; the subscriber reconnects.
    async with asyncio.timeout(10):
        while True:
            with contextlib.suppress(StoreError):
                await a.apply(AOR, [binding("phone")], [])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(heard.get(), 0.2)
                break
    assert [x.key for x in await b.get(AOR, NOW)] == ["phone"]
