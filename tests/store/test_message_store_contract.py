"""The `MessageStore` contract, run against every backend.

To add a backend, write an opener `async def _open_x(place: Path) -> MessageStore`
and add one line to `BACKENDS` (with `marks=(pytest.mark.redis,)` when it needs a
server). `place` is a per-test directory; opening it a second time must see what the
first store wrote when the backend is persistent.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sipushd.core.binding import Binding
from sipushd.core.messages import StoredMessage
from sipushd.sip import Endpoint
from sipushd.store.base import StoreError
from sipushd.store.messages import (
    DuplicateMessageError,
    MemoryMessageStore,
    MessageLimitError,
    MessageStore,
)
from sipushd.store.messages_sqlite import MIGRATIONS, SCHEMA_VERSION, SqliteMessageStore
from sipushd.store.redis_messages import RedisMessageStore
from sipushd.store.sqlite import SqliteBindingStore
from tests.store.backends import Backend, backend_params, redis_prefix
from tests.store.redis_server import shared_url


async def _open_memory(place: Path) -> MessageStore:
    return MemoryMessageStore()


async def _open_sqlite(place: Path) -> MessageStore:
    return await SqliteMessageStore.open(place / "sipushd.db")


async def _open_redis(place: Path) -> MessageStore:
    return await RedisMessageStore.open(shared_url(), redis_prefix(place))


BACKENDS: dict[str, Backend[MessageStore]] = {
    "memory": Backend(_open_memory, persistent=False),
    "sqlite": Backend(_open_sqlite, persistent=True),
    "redis": Backend(_open_redis, persistent=True, marks=(pytest.mark.redis,)),
}

AOR = "sip:alice@example.org"
BOB = "sip:bob@example.org"
NOW = 10_000.0
TTL = 600.0
LIMIT = 100


def message(number: int, aor: str = AOR, *, at: float = NOW, ttl: float = TTL) -> StoredMessage:
    """Message `m<number>` for `aor`, arrived at `at`."""
    data = (
        f"MESSAGE {aor} SIP/2.0\r\nCall-ID: call-{number}\r\nContent-Length: 5\r\n\r\nhello"
    ).encode()
    return StoredMessage(
        id=f"m{number}",
        aor=aor,
        call_id=f"call-{number}",
        sender="sip:carol@example.net",
        arrived_at=at,
        expires_at=at + ttl,
        data=data,
        chat_room_addr="sip:room@conf.example.org" if number == 0 else None,
    )


@pytest.fixture(params=backend_params(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend[MessageStore]:
    return BACKENDS[request.param]


@pytest.fixture(params=backend_params(BACKENDS, persistent_only=True))
def persistent(request: pytest.FixtureRequest) -> Backend[MessageStore]:
    return BACKENDS[request.param]


@pytest_asyncio.fixture
async def store(backend: Backend[MessageStore], tmp_path: Path) -> AsyncIterator[MessageStore]:
    opened = await backend.open(tmp_path)
    yield opened
    await opened.close()


def ids(messages: list[StoredMessage]) -> list[str]:
    return [m.id for m in messages]


@pytest.mark.asyncio
async def test_an_empty_store_has_nothing_pending(store: MessageStore) -> None:
    assert await store.pending(AOR, "phone", NOW) == []
    assert await store.count(AOR, NOW) == 0
    assert await store.total(NOW) == 0
    assert await store.get("m1") is None
    assert await store.waiting("m1") == []
    assert await store.mark_done("m1", "phone") is False


@pytest.mark.asyncio
async def test_added_message_comes_back_whole(store: MessageStore) -> None:
    original = message(0)
    await store.add(original, ["phone", "tablet"], limit=LIMIT, now=NOW)
    assert await store.get("m0") == original
    assert await store.pending(AOR, "phone", NOW) == [original]
    assert await store.waiting("m0") == ["phone", "tablet"]
    assert (await store.count(AOR, NOW), await store.total(NOW)) == (1, 1)
    assert await store.pending(BOB, "phone", NOW) == []


@pytest.mark.asyncio
async def test_pending_is_in_arrival_order_per_device(store: MessageStore) -> None:
    # Added out of order; the two at the same instant keep the order they were added in.
    await store.add(message(3, at=NOW + 2), ["phone"], limit=LIMIT, now=NOW)
    await store.add(message(1, at=NOW), ["phone"], limit=LIMIT, now=NOW)
    await store.add(message(2, at=NOW), ["phone", "tablet"], limit=LIMIT, now=NOW)
    assert ids(await store.pending(AOR, "phone", NOW + 3)) == ["m1", "m2", "m3"]
    # m1 and m3 were stored for "phone" only, but a device they never knew still gets them.
    assert ids(await store.pending(AOR, "tablet", NOW + 3)) == ["m1", "m2", "m3"]


@pytest.mark.asyncio
async def test_mark_done_is_per_device_and_the_last_one_removes_the_message(
    store: MessageStore,
) -> None:
    await store.add(message(1), ["phone", "tablet"], limit=LIMIT, now=NOW)
    await store.add(message(2), ["phone", "tablet"], limit=LIMIT, now=NOW)
    assert await store.mark_done("m1", "phone") is False
    assert ids(await store.pending(AOR, "phone", NOW)) == ["m2"]
    assert ids(await store.pending(AOR, "tablet", NOW)) == ["m1", "m2"]
    assert await store.waiting("m1") == ["tablet"]
    assert await store.mark_done("m1", "phone") is False, "marking twice changes nothing"
    assert await store.mark_done("m1", "tablet") is True
    assert await store.get("m1") is None
    assert await store.count(AOR, NOW) == 1


@pytest.mark.asyncio
async def test_a_device_that_is_not_a_recipient_does_not_keep_the_message(
    store: MessageStore,
) -> None:
    await store.add(message(1), ["phone"], limit=LIMIT, now=NOW)
    assert await store.mark_done("m1", "new-tablet") is False
    assert ids(await store.pending(AOR, "new-tablet", NOW)) == []
    assert await store.mark_done("m1", "phone") is True


@pytest.mark.asyncio
async def test_a_message_for_one_device_goes_to_that_device_only(store: MessageStore) -> None:
    await store.add(dataclasses.replace(message(1), device="phone"), ["phone"], limit=9, now=NOW)
    await store.add(message(2), ["phone"], limit=9, now=NOW)
    assert ids(await store.pending(AOR, "phone", NOW)) == ["m1", "m2"]
    assert ids(await store.pending(AOR, "tablet", NOW)) == ["m2"]
    assert (await store.get("m1")) == dataclasses.replace(message(1), device="phone")


@pytest.mark.asyncio
async def test_the_per_aor_limit_refuses_and_stores_nothing(store: MessageStore) -> None:
    await store.add(message(1), ["phone"], limit=2, now=NOW)
    await store.add(message(2), ["phone"], limit=2, now=NOW)
    with pytest.raises(MessageLimitError):
        await store.add(message(3), ["phone"], limit=2, now=NOW)
    assert await store.get("m3") is None
    assert await store.count(AOR, NOW) == 2
    # Other AORs have their own limit; a delivered message frees a place.
    await store.add(message(4, aor=BOB), ["phone"], limit=2, now=NOW)
    await store.mark_done("m1", "phone")
    await store.add(message(3), ["phone"], limit=2, now=NOW)
    assert ids(await store.pending(AOR, "phone", NOW)) == ["m2", "m3"]


@pytest.mark.asyncio
async def test_expired_messages_do_not_count_and_are_purged(store: MessageStore) -> None:
    await store.add(message(1, ttl=10), ["phone"], limit=1, now=NOW)
    assert ids(await store.pending(AOR, "phone", NOW + 9)) == ["m1"]
    assert await store.pending(AOR, "phone", NOW + 10) == []
    assert await store.count(AOR, NOW + 10) == 0
    # The expired message no longer takes a place under the limit.
    await store.add(message(2, at=NOW + 10), ["phone"], limit=1, now=NOW + 10)
    assert await store.purge_expired(NOW + 10) == 1
    assert await store.get("m1") is None
    assert ids(await store.pending(AOR, "phone", NOW + 10)) == ["m2"]
    assert await store.purge_expired(NOW + 10) == 0


@pytest.mark.asyncio
async def test_the_same_id_cannot_be_added_twice(store: MessageStore) -> None:
    await store.add(message(1), ["phone"], limit=LIMIT, now=NOW)
    with pytest.raises(DuplicateMessageError):
        await store.add(message(1), ["tablet"], limit=LIMIT, now=NOW)
    assert await store.waiting("m1") == ["phone"]


@pytest.mark.asyncio
async def test_concurrent_adds_respect_the_limit(store: MessageStore) -> None:
    results = await asyncio.gather(
        *(store.add(message(n), ["phone"], limit=5, now=NOW) for n in range(1, 21)),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, MessageLimitError)]
    assert len(refused) == 15
    assert await store.count(AOR, NOW) == 5


@pytest.mark.asyncio
async def test_a_closed_store_raises(backend: Backend[MessageStore], tmp_path: Path) -> None:
    store = await backend.open(tmp_path)
    await store.close()
    with pytest.raises(StoreError):
        await store.pending(AOR, "phone", NOW)


@pytest.mark.asyncio
async def test_everything_survives_a_restart(
    persistent: Backend[MessageStore], tmp_path: Path
) -> None:
    first = await persistent.open(tmp_path)
    await first.add(message(0), ["phone", "tablet"], limit=LIMIT, now=NOW)
    await first.add(message(2, at=NOW + 1), ["phone"], limit=LIMIT, now=NOW)
    await first.mark_done("m0", "phone")
    await first.close()
    second = await persistent.open(tmp_path)
    try:
        assert ids(await second.pending(AOR, "phone", NOW + 2)) == ["m2"]
        assert ids(await second.pending(AOR, "tablet", NOW + 2)) == ["m0", "m2"]
        assert await second.get("m0") == message(0)
        assert await second.waiting("m0") == ["tablet"]
    finally:
        await second.close()


# --- SQLite specifics ---------------------------------------------------------------------


@pytest.mark.asyncio
async def test_sqlite_shares_the_file_with_the_binding_store(tmp_path: Path) -> None:
    path = tmp_path / "sipushd.db"
    bindings = await SqliteBindingStore.open(path)
    messages = await SqliteMessageStore.open(path)
    try:
        binding = Binding(
            aor=AOR,
            key="phone",
            contact="sip:phone@192.0.2.1",
            expires_at=NOW + 60,
            call_id="c",
            cseq=1,
            flow=Endpoint("udp", "192.0.2.1", 5060),
            registered_at=NOW,
            updated_at=NOW,
        )
        await asyncio.gather(
            bindings.apply(AOR, [binding], []),
            messages.add(message(1), ["phone"], limit=LIMIT, now=NOW),
        )
        assert await bindings.get(AOR, NOW) == [binding]
        assert ids(await messages.pending(AOR, "phone", NOW)) == ["m1"]
    finally:
        await messages.close()
        await bindings.close()
    with sqlite3.connect(path) as db:
        assert db.execute(
            "SELECT version FROM schema_versions WHERE component = 'messages'"
        ).fetchone() == (SCHEMA_VERSION,)
    # Both open again on the migrated file.
    reopened = await SqliteBindingStore.open(path)
    await reopened.close()


@pytest.mark.asyncio
async def test_sqlite_migrates_a_version_1_file_keeping_its_messages(tmp_path: Path) -> None:
    path = tmp_path / "sipushd.db"
    with sqlite3.connect(path) as db:
        db.executescript(MIGRATIONS[0])
        db.execute("CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER)")
        db.execute("INSERT INTO schema_versions VALUES ('messages', 1)")
        old = message(1)
        db.execute(
            "INSERT INTO messages (id, aor, call_id, sender, arrived_at, expires_at, "
            "chat_room_addr, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (old.id, old.aor, old.call_id, old.sender, old.arrived_at, old.expires_at, None,
             old.data),
        )  # fmt: skip
        db.execute("INSERT INTO message_devices VALUES ('m1', 'phone', 0)")
    store = await SqliteMessageStore.open(path)
    try:
        assert await store.pending(AOR, "phone", NOW) == [old]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_sqlite_refuses_a_newer_message_schema(tmp_path: Path) -> None:
    path = tmp_path / "sipushd.db"
    store = await SqliteMessageStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_versions SET version = ? WHERE component = 'messages'", (99,))
    with pytest.raises(StoreError, match="newer"):
        await SqliteMessageStore.open(path)
