"""SqliteMessageStore answers `pending` for an AOR without MESSAGEs from memory, correctly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from sipushd.store.messages_sqlite import SqliteMessageStore
from tests.store.test_message_store_contract import AOR, BOB, LIMIT, NOW, TTL, ids, message


class _Unusable:
    """Stands in for the connection: any query fails the test."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the file was asked ({name})")


@pytest.mark.asyncio
async def test_an_aor_without_messages_is_not_looked_up_in_the_file(tmp_path: Path) -> None:
    store = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    await store.add(message(1), ["phone"], limit=LIMIT, now=NOW)
    db = store._db
    store._db = _Unusable()  # type: ignore[assignment]
    try:
        assert await store.pending(BOB, "phone", NOW) == []
    finally:
        store._db = db
    assert ids(await store.pending(AOR, "phone", NOW)) == ["m1"]
    await store.close()


@pytest.mark.asyncio
async def test_the_aor_set_follows_adds_deliveries_and_purges(tmp_path: Path) -> None:
    store = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    try:
        await store.add(message(1), ["phone"], limit=LIMIT, now=NOW)
        await store.add(message(2, BOB), ["phone"], limit=LIMIT, now=NOW)
        assert await store.mark_done("m1", "phone") is True
        assert await store.pending(AOR, "phone", NOW) == []
        await store.add(message(3), ["phone"], limit=LIMIT, now=NOW)
        assert ids(await store.pending(AOR, "phone", NOW)) == ["m3"]
        assert await store.purge_expired(NOW + TTL + 1) == 2
        assert await store.pending(BOB, "phone", NOW) == []
        await store.add(message(4, BOB), ["phone"], limit=LIMIT, now=NOW)
        assert ids(await store.pending(BOB, "phone", NOW)) == ["m4"]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_reopened_store_knows_which_aors_have_messages(tmp_path: Path) -> None:
    first = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    await first.add(message(1), ["phone"], limit=LIMIT, now=NOW)
    await first.close()
    second = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    try:
        assert ids(await second.pending(AOR, "phone", NOW)) == ["m1"]
        assert await second.pending(BOB, "phone", NOW) == []
    finally:
        await second.close()


@pytest.mark.asyncio
async def test_a_full_aor_keeps_its_messages_visible(tmp_path: Path) -> None:
    store = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    try:
        await store.add(message(1), ["phone"], limit=1, now=NOW)
        with pytest.raises(Exception, match="already has"):
            await store.add(message(2), ["phone"], limit=1, now=NOW)
        assert ids(await store.pending(AOR, "phone", NOW)) == ["m1"]
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_may_have_pending_is_false_only_for_an_aor_without_messages(
    tmp_path: Path,
) -> None:
    store = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    try:
        assert not store.may_have_pending(AOR)
        await store.add(message(1), ["phone"], limit=LIMIT, now=NOW)
        assert store.may_have_pending(AOR) and not store.may_have_pending(BOB)
        async with store._lock:
            # Another operation holds the lock: it says nothing about BOB...
            assert not store.may_have_pending(BOB)
            # ...but an add() of BOB's first MESSAGE waiting behind it may.
            adding = asyncio.ensure_future(
                store.add(message(2, BOB), ["phone"], limit=LIMIT, now=NOW)
            )
            await asyncio.sleep(0)
            assert not adding.done() and store.may_have_pending(BOB)
        await adding
        assert store.may_have_pending(BOB)
        assert await store.mark_done("m1", "phone") is True
        assert not store.may_have_pending(AOR)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_a_failed_add_leaves_no_trace_in_may_have_pending(tmp_path: Path) -> None:
    store = await SqliteMessageStore.open(tmp_path / "sipushd.db")
    try:
        with pytest.raises(Exception, match="already has"):
            await store.add(message(1), ["phone"], limit=0, now=NOW)
        assert not store.may_have_pending(AOR)
    finally:
        await store.close()
