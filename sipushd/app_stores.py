"""Opening the stores the config names (`storage.backend`): bindings and stored messages.

Both live in the same place: one SQLite file, or one Redis server under one key
prefix. `storage.sqlite.path: ":memory:"` keeps both in memory (tests, trials).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from sipushd.config import Config
from sipushd.store.base import BindingStore
from sipushd.store.memory import MemoryBindingStore
from sipushd.store.messages import MemoryMessageStore, MessageStore
from sipushd.store.messages_sqlite import SqliteMessageStore
from sipushd.store.redis_bindings import RedisBindingStore
from sipushd.store.redis_messages import RedisMessageStore
from sipushd.store.sqlite import SqliteBindingStore

__all__ = ["open_message_store", "open_store"]

S = TypeVar("S", BindingStore, MessageStore)


async def open_store(config: Config) -> BindingStore:
    """The binding store the config names."""
    return await _open_backend(
        config, MemoryBindingStore, SqliteBindingStore.open, RedisBindingStore.open
    )


async def open_message_store(config: Config) -> MessageStore:
    """The message store the config names, next to the bindings (same file or server)."""
    return await _open_backend(
        config, MemoryMessageStore, SqliteMessageStore.open, RedisMessageStore.open
    )


async def _open_backend(
    config: Config,
    in_memory: Callable[[], S],
    sqlite: Callable[[Path], Awaitable[S]],
    redis: Callable[[str, str], Awaitable[S]],
) -> S:
    """One store of the configured backend; `sqlite.path: ":memory:"` keeps it in memory."""
    storage = config.storage
    if storage.backend == "sqlite":
        path = storage.sqlite.path
        if str(path) == ":memory:":
            return in_memory()
        path.parent.mkdir(parents=True, exist_ok=True)
        return await sqlite(path)
    if storage.backend == "redis":
        return await redis(storage.redis.url, storage.redis.key_prefix)
    raise ValueError(f"storage backend {storage.backend!r} is not available")
