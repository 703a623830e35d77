"""SQLite specifics: schema migrations, pragmas, and a failed commit changing nothing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sipushd.core.binding import Binding
from sipushd.sip import Endpoint
from sipushd.store.base import StoreError
from sipushd.store.sqlite import SCHEMA_VERSION, SqliteBindingStore

AOR = "sip:alice@example.org"
NOW = 500.0


def binding(key: str) -> Binding:
    return Binding(
        aor=AOR,
        key=key,
        contact=f"sip:{key}@192.0.2.1",
        expires_at=NOW + 600,
        call_id="c",
        cseq=1,
        flow=Endpoint("udp", "192.0.2.1", 5060),
        registered_at=NOW,
        updated_at=NOW,
    )


@pytest.mark.asyncio
async def test_new_file_is_migrated_to_the_current_schema_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = await SqliteBindingStore.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    # Opening again runs no migration twice.
    store = await SqliteBindingStore.open(path)
    await store.close()


@pytest.mark.asyncio
async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match="newer"):
        await SqliteBindingStore.open(path)


@pytest.mark.asyncio
async def test_a_failed_commit_changes_neither_file_nor_memory(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    store = await SqliteBindingStore.open(path)
    await store.apply(AOR, [binding("a")], [])
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON bindings WHEN NEW.key = 'boom' "
            "BEGIN SELECT RAISE(ABORT, 'disk says no'); END"
        )
    with pytest.raises(StoreError, match="disk says no"):
        await store.apply(AOR, [binding("b"), binding("boom")], ["a"])
    assert [b.key for b in await store.get(AOR, NOW)] == ["a"]
    await store.apply(AOR, [binding("b")], [])  # the connection is usable again
    await store.close()
    store = await SqliteBindingStore.open(path)
    assert [b.key for b in await store.get(AOR, NOW)] == ["a", "b"]
    await store.close()


@pytest.mark.asyncio
async def test_a_file_that_is_not_a_database_is_a_store_error(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    path.write_bytes(b"this is not an sqlite file" * 100)
    with pytest.raises(StoreError):
        await SqliteBindingStore.open(path)
