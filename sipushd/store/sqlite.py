"""SQLite binding store: one file, WAL, with an in-memory mirror in front.

One job: keep bindings durable across restarts on a single node.

Design choices:
- sipushd is the only writer of its file, so every binding is loaded into a
  `BindingIndex` at open and all reads are served from memory. Writes go to
  SQLite first and reach the mirror only after COMMIT succeeded
  (write-through), so a failed commit leaves both unchanged and the
  registrar answers 500 (RFC 3261 §10.3 step 7). Memory grows with the
  number of live bindings (well under 1 KiB each).
- One connection; `apply()` is one transaction of at most two
  `executemany` statements. `journal_mode=WAL` + `synchronous=NORMAL`:
  commits do not fsync; a power loss may drop the last transactions but
  never corrupts the file (phones re-register anyway).
- Schema versions live in `PRAGMA user_version`; `MIGRATIONS[n]` moves the
  schema from version n to n+1 inside one transaction. Never edit a shipped
  migration; append a new one.
- A flow id names a connection of the process that stored it, so bindings
  loaded from the file come back with `flow.flow = None`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from sipushd.core.binding import Binding, push_from_json, push_to_json
from sipushd.sip import Endpoint
from sipushd.store.base import StoreError
from sipushd.store.memory import MemoryBindingStore

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "SqliteBindingStore"]

MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: bindings keyed by (aor, key); push target and Path as JSON.
    """
    CREATE TABLE bindings (
        aor TEXT NOT NULL,
        key TEXT NOT NULL,
        contact TEXT NOT NULL,
        expires_at REAL NOT NULL,
        call_id TEXT NOT NULL,
        cseq INTEGER NOT NULL,
        flow_transport TEXT NOT NULL,
        flow_host TEXT NOT NULL,
        flow_port INTEGER NOT NULL,
        registered_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        instance TEXT,
        reg_id INTEGER,
        q REAL,
        path TEXT NOT NULL,
        push TEXT,
        pnsreg INTEGER NOT NULL,
        user_agent TEXT,
        PRIMARY KEY (aor, key)
    ) WITHOUT ROWID;
    CREATE INDEX bindings_expires_at ON bindings (expires_at);
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)

_COLUMNS = (
    "aor, key, contact, expires_at, call_id, cseq, flow_transport, flow_host, flow_port, "
    "registered_at, updated_at, instance, reg_id, q, path, push, pnsreg, user_agent"
)
_UPSERT = f"INSERT OR REPLACE INTO bindings ({_COLUMNS}) VALUES ({', '.join('?' * 18)})"
_DELETE = "DELETE FROM bindings WHERE aor = ? AND key = ?"


class SqliteBindingStore(MemoryBindingStore):
    """Bindings in an SQLite file, read from a write-through memory mirror."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        """Use `SqliteBindingStore.open()`."""
        super().__init__()
        self._db = db
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str | Path) -> SqliteBindingStore:
        """Open (creating and migrating if needed) the database at `path`."""
        try:
            db = await aiosqlite.connect(path, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open {path}: {exc}") from exc
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=5000")
            await migrate(db)
            store = cls(db)
            async with db.execute(f"SELECT {_COLUMNS} FROM bindings") as cursor:
                rows = await cursor.fetchall()
            store._index.load(_from_row(row) for row in rows)
        except (sqlite3.Error, StoreError, ValueError, KeyError, TypeError) as exc:
            await db.close()
            if isinstance(exc, StoreError):
                raise
            raise StoreError(f"cannot load bindings from {path}: {exc}") from exc
        return store

    async def apply(self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]) -> None:
        """Atomically upsert and remove bindings of one AOR (one SQLite transaction)."""
        self._check_open()
        self._index.check(aor, upserts)
        # The mirror changes under the same lock as the file, so the two never diverge.
        async with self._lock:
            await self._write_locked(upserts, [(aor, key) for key in removals])
            self._index.apply(aor, upserts, removals)

    async def remove_token(self, token: str) -> list[Binding]:
        """Drop a dead push token everywhere; return the updated bindings."""
        self._check_open()
        async with self._lock:
            updated = self._index.without_token(token)
            await self._write_locked(updated, ())
            for binding in updated:
                self._index.apply(binding.aor, (binding,), ())
        return updated

    async def purge_expired(self, now: float) -> int:
        """Delete expired bindings from the file and the mirror; return how many."""
        self._check_open()
        async with self._lock:
            dead = self._index.expired(now)
            await self._write_locked((), [(b.aor, b.key) for b in dead])
            for binding in dead:
                self._index.apply(binding.aor, (), (binding.key,))
        return len(dead)

    async def close(self) -> None:
        """Close the database connection."""
        if not self._closed:
            self._closed = True
            async with self._lock:
                await self._db.close()

    async def _write_locked(
        self, upserts: Sequence[Binding], removals: Sequence[tuple[str, str]]
    ) -> None:
        if not upserts and not removals:
            return
        try:
            await self._db.execute("BEGIN")
            if removals:
                await self._db.executemany(_DELETE, removals)
            if upserts:
                await self._db.executemany(_UPSERT, [_to_row(b) for b in upserts])
            await self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            await self._rollback()
            raise StoreError(f"binding update failed: {exc}") from exc

    async def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")


async def migrate(db: aiosqlite.Connection) -> int:
    """Bring the schema to `SCHEMA_VERSION`; return the version found before."""
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    found = int(row[0]) if row else 0
    if found > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {found} is newer than this sipushd ({SCHEMA_VERSION})"
        )
    for version in range(found, SCHEMA_VERSION):
        script = f"BEGIN;\n{MIGRATIONS[version]}\nPRAGMA user_version = {version + 1};\nCOMMIT;"
        try:
            await db.executescript(script)
        except sqlite3.Error as exc:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            raise StoreError(f"schema migration to version {version + 1} failed: {exc}") from exc
    return found


def _to_row(b: Binding) -> tuple[Any, ...]:
    push = json.dumps(push_to_json(b.push), separators=(",", ":")) if b.push else None
    return (
        b.aor,
        b.key,
        b.contact,
        b.expires_at,
        b.call_id,
        b.cseq,
        b.flow.transport,
        b.flow.host,
        b.flow.port,
        b.registered_at,
        b.updated_at,
        b.instance,
        b.reg_id,
        b.q,
        json.dumps(list(b.path), separators=(",", ":")),
        push,
        int(b.pnsreg),
        b.user_agent,
    )


def _from_row(row: Any) -> Binding:
    (aor, key, contact, expires_at, call_id, cseq, transport, host, port) = row[:9]
    (registered_at, updated_at, instance, reg_id, q, path, push, pnsreg, user_agent) = row[9:]
    return Binding(
        aor=aor,
        key=key,
        contact=contact,
        expires_at=float(expires_at),
        call_id=call_id,
        cseq=int(cseq),
        # The flow id belonged to the process that wrote the row (see module docstring).
        flow=Endpoint(transport, host, int(port), None),
        registered_at=float(registered_at),
        updated_at=float(updated_at),
        instance=instance,
        reg_id=reg_id,
        q=q,
        path=tuple(json.loads(path)),
        push=push_from_json(json.loads(push)) if push else None,
        pnsreg=bool(pnsreg),
        user_agent=user_agent,
    )
