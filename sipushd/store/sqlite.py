"""SQLite binding store: one file, WAL, with an in-memory mirror in front.

One job: keep bindings durable across restarts on a single node.

Design choices:
- sipushd is the only writer of its file, so every binding is loaded into a
  `BindingIndex` at open and all reads are served from memory. Writes go to
  SQLite first and reach the mirror only after COMMIT succeeded
  (write-through), so a failed commit leaves both unchanged and the
  registrar answers 500 (RFC 3261 §10.3 step 7). Memory grows with the
  number of live bindings (well under 1 KiB each).
- One connection and one writer task. `apply()` calls queue up and the
  writer commits each run of them as one transaction of at most two
  `executemany` statements (group commit): a burst of REGISTERs costs one
  commit, and every `apply()` is still all-or-nothing. `journal_mode=WAL` + `synchronous=NORMAL`:
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
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiosqlite

from sipushd.core.binding import Binding, push_from_json, push_to_json
from sipushd.sip import Endpoint
from sipushd.store._sqlite import connect
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


@dataclass(eq=False)
class _Apply:
    """One `apply()` call waiting for the writer."""

    aor: str
    upserts: Sequence[Binding]
    removals: Sequence[str]
    done: asyncio.Future[None]


@dataclass(eq=False)
class _Exclusive:
    """A write computed from the committed mirror; the writer runs it alone."""

    run: Callable[[], Awaitable[Any]]
    done: asyncio.Future[Any]


class SqliteBindingStore(MemoryBindingStore):
    """Bindings in an SQLite file, read from a write-through memory mirror."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        """Use `SqliteBindingStore.open()`."""
        super().__init__()
        self._db = db
        self._queue: deque[_Apply | _Exclusive] = deque()
        self._writer: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, path: str | Path) -> SqliteBindingStore:
        """Open (creating and migrating if needed) the database at `path`."""
        db = await connect(path, synchronous="NORMAL")
        try:
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
        """Atomically upsert and remove bindings of one AOR; returns once committed."""
        await self.apply_soon(aor, upserts, removals)

    def apply_soon(
        self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]
    ) -> asyncio.Future[None]:
        """Queue the change for the writer; the future is done once it is committed."""
        self._check_open()
        self._index.check(aor, upserts)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._enqueue(_Apply(aor, tuple(upserts), tuple(removals), done))
        return done

    async def remove_token(self, token: str) -> list[Binding]:
        """Drop a dead push token everywhere; return the updated bindings."""
        self._check_open()

        async def run() -> list[Binding]:
            updated = self._index.without_token(token)
            await self._write(updated, ())
            for binding in updated:
                self._index.apply(binding.aor, (binding,), ())
            return updated

        return cast(list[Binding], await self._exclusive(run))

    async def purge_expired(self, now: float) -> int:
        """Delete expired bindings from the file and the mirror; return how many."""
        self._check_open()

        async def run() -> int:
            dead = self._index.expired(now)
            await self._write((), [(b.aor, b.key) for b in dead])
            for binding in dead:
                self._index.apply(binding.aor, (), (binding.key,))
            return len(dead)

        return cast(int, await self._exclusive(run))

    async def close(self) -> None:
        """Finish queued writes, then close the database connection."""
        if self._closed:
            return
        self._closed = True
        if self._writer is not None:
            await self._writer
        await self._db.close()

    async def _exclusive(self, run: Callable[[], Awaitable[Any]]) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._enqueue(_Exclusive(run, done))
        return await done

    def _enqueue(self, op: _Apply | _Exclusive) -> None:
        self._queue.append(op)
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        """The single writer: group commit of queued applies, in order.

        Consecutive `apply()` calls share one transaction (their net effect
        per key), so a burst of REGISTERs costs one commit. The mirror is
        updated only after COMMIT, so reads never see uncommitted bindings.
        """
        try:
            while self._queue:
                head = self._queue.popleft()
                if isinstance(head, _Exclusive):
                    await _settle(head.done, head.run)
                    continue
                batch = [head]
                while self._queue and isinstance(self._queue[0], _Apply):
                    batch.append(cast(_Apply, self._queue.popleft()))
                await self._commit(batch)
        finally:
            self._writer = None

    async def _commit(self, batch: list[_Apply]) -> None:
        final: dict[tuple[str, str], Binding | None] = {}
        for op in batch:
            for key in op.removals:
                final[(op.aor, key)] = None
            for binding in op.upserts:
                final[(op.aor, binding.key)] = binding
        upserts = [b for b in final.values() if b is not None]
        removals = [k for k, b in final.items() if b is None]
        try:
            await self._write(upserts, removals)
        except Exception as exc:  # every waiter learns why; the writer carries on
            for op in batch:
                _fail(op.done, exc)
            return
        for op in batch:
            self._index.apply(op.aor, op.upserts, op.removals)
            if not op.done.done():
                op.done.set_result(None)

    async def _write(self, upserts: Sequence[Binding], removals: Sequence[tuple[str, str]]) -> None:
        """One transaction: delete `removals`, then upsert `upserts` (distinct keys)."""
        if not upserts and not removals:
            return
        rows = [_to_row(b) for b in upserts]
        try:
            await self._db.execute("BEGIN")
            if removals:
                await self._db.executemany(_DELETE, removals)
            if rows:
                await self._db.executemany(_UPSERT, rows)
            await self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            await self._rollback()
            raise StoreError(f"binding update failed: {exc}") from exc

    async def _rollback(self) -> None:
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")


async def _settle(done: asyncio.Future[Any], run: Callable[[], Awaitable[Any]]) -> None:
    try:
        result = await run()
    except Exception as exc:
        _fail(done, exc)
    else:
        if not done.done():
            done.set_result(result)


def _fail(done: asyncio.Future[Any], exc: Exception) -> None:
    if not done.done():
        done.set_exception(exc if isinstance(exc, StoreError) else StoreError(str(exc)))


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


# json.dumps(..., separators=...) builds an encoder per call; one shared encoder writes
# the same text.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


def _to_row(b: Binding) -> tuple[Any, ...]:
    push = _COMPACT.encode(push_to_json(b.push)) if b.push else None
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
        _COMPACT.encode(list(b.path)) if b.path else "[]",
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
