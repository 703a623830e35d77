"""The one way sipushd opens an SQLite file: WAL, a busy timeout, and StoreError on failure.

The binding store and the message store share the file, each with its own connection
and its own schema versions; only the durability of a commit differs between them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

import aiosqlite

from sipushd.store.base import StoreError


async def connect(
    path: str | Path, *, synchronous: Literal["NORMAL", "FULL"]
) -> aiosqlite.Connection:
    """An autocommit connection to `path` in WAL mode with the given `synchronous` level."""
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open {path}: {exc}") from exc
    try:
        await db.execute("PRAGMA busy_timeout=5000")
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute(f"PRAGMA synchronous={synchronous}")
    except sqlite3.Error as exc:
        await db.close()
        raise StoreError(f"cannot open {path}: {exc}") from exc
    return db
