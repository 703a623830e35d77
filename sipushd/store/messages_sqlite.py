"""SQLite message store: stored MESSAGEs survive a restart.

One job: the `MessageStore` contract on an SQLite file, usually the same
file as the bindings.

Design choices:
- Its own connection and its own tables (`messages`, `message_devices`),
  so it shares the file with `SqliteBindingStore` without sharing its writer.
  Both connections use WAL; a writer waits for the other (`busy_timeout`).
- Its own schema version in the table `schema_versions` (row `messages`):
  `PRAGMA user_version` belongs to the binding store. `MIGRATIONS[n]` moves
  the message schema from version n to n+1 in one transaction; never edit a
  shipped migration, append one.
- `synchronous=FULL` on this connection: a `202 Accepted` promises the
  MESSAGE will be delivered, so the commit before it is fsynced.
- One connection, one lock: each operation runs alone (aiosqlite shares a
  connection between coroutines, and a transaction must not interleave).
- Reads go to the file (MESSAGEs are few and read when a device registers),
  except that the store keeps the set of AORs that have messages in the file
  (loaded at open, grown by `add`, shrunk when a message is deleted): every
  REGISTER asks `pending`, and an AOR with no MESSAGE is answered from memory.
  The daemon is the only writer of its file.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from sipushd.core.messages import StoredMessage
from sipushd.store._sqlite import connect
from sipushd.store.base import StoreError
from sipushd.store.messages import DuplicateMessageError, MessageLimitError, MessageStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteMessageStore"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: messages in arrival order, one row per (message, device) with its state.
    """
    CREATE TABLE messages (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        aor TEXT NOT NULL,
        call_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        arrived_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        chat_room_addr TEXT,
        data BLOB NOT NULL
    );
    CREATE INDEX messages_aor ON messages (aor, arrived_at, seq);
    CREATE INDEX messages_expires_at ON messages (expires_at);
    CREATE TABLE message_devices (
        message_id TEXT NOT NULL,
        device TEXT NOT NULL,
        done INTEGER NOT NULL,
        PRIMARY KEY (message_id, device)
    ) WITHOUT ROWID;
    """,
    # 1 -> 2: a MESSAGE sent to one device's GRUU names that device.
    """
    ALTER TABLE messages ADD COLUMN device TEXT;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
COMPONENT = "messages"

_COLUMNS = "id, aor, call_id, sender, arrived_at, expires_at, chat_room_addr, data, device"
_INSERT = f"INSERT INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_PENDING = f"""
    SELECT {_COLUMNS} FROM messages AS m
    WHERE m.aor = ? AND m.expires_at > ? AND (m.device IS NULL OR m.device = ?)
    AND NOT EXISTS (
        SELECT 1 FROM message_devices AS d
        WHERE d.message_id = m.id AND d.device = ? AND d.done = 1
    )
    ORDER BY m.arrived_at, m.seq
"""
_MARK_DONE = """
    INSERT INTO message_devices (message_id, device, done) VALUES (?, ?, 1)
    ON CONFLICT (message_id, device) DO UPDATE SET done = 1
"""


class SqliteMessageStore(MessageStore):
    """Stored MESSAGEs in an SQLite file."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        """Use `SqliteMessageStore.open()`."""
        self._db = db
        self._lock = asyncio.Lock()
        self._closed = False
        # AORs with at least one row in `messages` (expired or not); None after a failed
        # transaction, until the next delete reloads it: then `pending` always asks the file.
        self._aors: set[str] | None = set()
        # AORs with an add() under way (waiting for the lock or inside its transaction).
        self._adding: Counter[str] = Counter()

    @classmethod
    async def open(cls, path: str | Path) -> SqliteMessageStore:
        """Open (creating and migrating if needed) the message tables in the file at `path`."""
        # FULL: a MESSAGE answered 202 must survive a power loss, not only a crash.
        db = await connect(path, synchronous="FULL")
        try:
            await migrate(db)
            store = cls(db)
            await store._load_aors()
        except (sqlite3.Error, StoreError) as exc:
            await db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot open message store {path}: {exc}") from exc
        return store

    async def add(
        self, message: StoredMessage, recipients: Sequence[str], *, limit: int, now: float
    ) -> None:
        """Store `message` pending for `recipients`; MessageLimitError when the AOR is full."""
        self._adding[message.aor] += 1
        try:
            await self._add(message, recipients, limit, now)
        finally:
            self._adding[message.aor] -= 1
            if not self._adding[message.aor]:
                del self._adding[message.aor]

    async def _add(
        self, message: StoredMessage, recipients: Sequence[str], limit: int, now: float
    ) -> None:
        async with self._transaction():
            count = await self._scalar(
                "SELECT COUNT(*) FROM messages WHERE aor = ? AND expires_at > ?",
                (message.aor, now),
            )
            if count >= limit:
                raise MessageLimitError(f"{message.aor} already has {limit} stored messages")
            try:
                await self._db.execute(_INSERT, _to_row(message))
            except sqlite3.IntegrityError as exc:
                raise DuplicateMessageError(f"message {message.id} is already stored") from exc
            await self._db.executemany(
                "INSERT INTO message_devices (message_id, device, done) VALUES (?, ?, 0)",
                [(message.id, device) for device in dict.fromkeys(recipients)],
            )
            if self._aors is not None:
                self._aors.add(message.aor)

    async def pending(self, aor: str, device: str, now: float) -> list[StoredMessage]:
        """Live messages of `aor` that `device` is not done with, oldest first."""
        async with self._read():
            # Under the lock: an add() in progress has committed or failed by now.
            if self._aors is not None and aor not in self._aors:
                return []
            async with self._db.execute(_PENDING, (aor, now, device, device)) as cursor:
                rows = await cursor.fetchall()
        return [_from_row(row) for row in rows]

    def may_have_pending(self, aor: str) -> bool:
        """False when `aor` has no MESSAGE in the file and no add() for it is under way.

        Reads and other AORs' writes do not count: under load one of them holds the
        lock nearly all the time, and every REGISTER would then start a lookup.
        """
        return self._aors is None or aor in self._aors or aor in self._adding

    async def mark_done(self, message_id: str, device: str) -> bool:
        """Record `device` done; drop the message when nobody is pending."""
        async with self._transaction():
            if not await self._scalar("SELECT COUNT(*) FROM messages WHERE id = ?", (message_id,)):
                return False
            await self._db.execute(_MARK_DONE, (message_id, device))
            waiting = await self._scalar(
                "SELECT COUNT(*) FROM message_devices WHERE message_id = ? AND done = 0",
                (message_id,),
            )
            if waiting:
                return False
            await self._delete((message_id,))
            await self._load_aors()
            return True

    async def waiting(self, message_id: str) -> list[str]:
        """The devices the message is still pending for, sorted."""
        async with (
            self._read(),
            self._db.execute(
                "SELECT device FROM message_devices WHERE message_id = ? AND done = 0 "
                "ORDER BY device",
                (message_id,),
            ) as cursor,
        ):
            rows = await cursor.fetchall()
        return [str(row[0]) for row in rows]

    async def get(self, message_id: str) -> StoredMessage | None:
        """The stored message with that id, expired or not."""
        async with (
            self._read(),
            self._db.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE id = ?", (message_id,)
            ) as cursor,
        ):
            row = await cursor.fetchone()
        return _from_row(row) if row is not None else None

    async def count(self, aor: str, now: float) -> int:
        """The number of live messages stored for `aor`."""
        async with self._read():
            return await self._scalar(
                "SELECT COUNT(*) FROM messages WHERE aor = ? AND expires_at > ?", (aor, now)
            )

    async def total(self, now: float) -> int:
        """The number of live messages in the store."""
        async with self._read():
            return await self._scalar("SELECT COUNT(*) FROM messages WHERE expires_at > ?", (now,))

    async def purge_expired(self, now: float) -> int:
        """Delete every expired message; return how many."""
        async with self._transaction():
            async with self._db.execute(
                "SELECT id FROM messages WHERE expires_at <= ?", (now,)
            ) as cursor:
                ids = [str(row[0]) for row in await cursor.fetchall()]
            if ids:
                await self._delete(*[(i,) for i in ids])
                await self._load_aors()
            return len(ids)

    async def close(self) -> None:
        """Wait for the running operation, then close the connection."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            await self._db.close()

    # --- internals -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[None]:
        async with self._lock:
            self._check_open()
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"message store read failed: {exc}") from exc

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        async with self._lock:
            self._check_open()
            try:
                # IMMEDIATE: take the write lock now, so the limit check and the
                # insert see the same AOR count.
                await self._db.execute("BEGIN IMMEDIATE")
                yield
                await self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback()
                self._aors = None  # what the rollback restored is not known here
                raise StoreError(f"message store update failed: {exc}") from exc
            except BaseException as exc:
                await self._rollback()
                if not isinstance(exc, MessageLimitError | DuplicateMessageError):
                    self._aors = None  # e.g. cancelled after a delete reloaded the set
                raise

    async def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")

    async def _scalar(self, sql: str, params: tuple[Any, ...]) -> int:
        async with self._db.execute(sql, params) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def _load_aors(self) -> None:
        """(Re)read the AORs that have messages; inside a transaction after a delete."""
        async with self._db.execute("SELECT DISTINCT aor FROM messages") as cursor:
            self._aors = {str(row[0]) for row in await cursor.fetchall()}

    async def _delete(self, *ids: tuple[str]) -> None:
        await self._db.executemany("DELETE FROM message_devices WHERE message_id = ?", ids)
        await self._db.executemany("DELETE FROM messages WHERE id = ?", ids)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("message store is closed")


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the message schema to `SCHEMA_VERSION`; return the version found before."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions "
        "(component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    async with db.execute(
        "SELECT version FROM schema_versions WHERE component = ?", (COMPONENT,)
    ) as cursor:
        row = await cursor.fetchone()
    found = int(row[0]) if row else 0
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"message schema version {found} is newer than this sipushd ({SCHEMA_VERSION})"
        )
    for version in range(found, SCHEMA_VERSION):
        script = (
            f"BEGIN IMMEDIATE;\n{MIGRATIONS[version]}\n"
            "INSERT INTO schema_versions (component, version) "
            f"VALUES ('{COMPONENT}', {version + 1}) "
            "ON CONFLICT (component) DO UPDATE SET version = excluded.version;\nCOMMIT;"
        )
        try:
            await db.executescript(script)
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise StoreError(
                f"message schema migration to version {version + 1} failed: {exc}"
            ) from exc
    return found


def _to_row(m: StoredMessage) -> tuple[Any, ...]:
    return (
        m.id,
        m.aor,
        m.call_id,
        m.sender,
        m.arrived_at,
        m.expires_at,
        m.chat_room_addr,
        m.data,
        m.device,
    )


def _from_row(row: Any) -> StoredMessage:
    message_id, aor, call_id, sender, arrived_at, expires_at, chat_room_addr, data, device = row
    return StoredMessage(
        id=str(message_id),
        aor=str(aor),
        call_id=str(call_id),
        sender=str(sender),
        arrived_at=float(arrived_at),
        expires_at=float(expires_at),
        data=bytes(data),
        chat_room_addr=chat_room_addr,
        device=device,
    )
