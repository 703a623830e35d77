"""Redis message store: stored MESSAGEs shared by several sipushd nodes.

One job: the `MessageStore` contract on a Redis server (see
`sipushd.store.messages` for the rules).

Design choices:
- Keys, under the configured prefix `P`: `P m:<id>` hash of the message's
  fields (the raw request in `data`, an insertion number in `seq`);
  `P md:<id>` hash of device -> "0" pending / "1" done; `P ma:<aor>` sorted
  set of the AOR's message ids by `expires_at` (the live count under the
  limit); `P mexp` sorted set of every message id by `expires_at` (purge,
  total); `P mseq` the insertion counter.
- `add`, `mark_done`, `pending` and `purge_expired` are Lua scripts: the
  limit check and the insert are one atomic step however many nodes add at
  once, and a message leaves with all its keys. The keys are built inside
  the scripts, so this needs a single Redis server, not Redis Cluster.
- Durability is Redis's. A `202 Accepted` promises delivery, so run Redis
  with `appendonly yes` (and `appendfsync always` to survive a power loss,
  `everysec` loses at most a second); without it stored MESSAGEs die with
  the Redis process.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from sipushd.core.messages import StoredMessage
from sipushd.store.base import StoreError
from sipushd.store.messages import DuplicateMessageError, MessageLimitError, MessageStore
from sipushd.store.redis_bindings import connect, redis_errors

__all__ = ["RedisMessageStore"]

_LUA_COMMON = """
local p = ARGV[1]
local function remove(id)
  local aor = redis.call('HGET', p .. 'm:' .. id, 'aor')
  if aor then redis.call('ZREM', p .. 'ma:' .. aor, id) end
  redis.call('ZREM', p .. 'mexp', id)
  redis.call('DEL', p .. 'm:' .. id, p .. 'md:' .. id)
end
"""

# ARGV: prefix, id, aor, limit, now, expires_at, n fields, (name, value)..., recipients...
_ADD = (
    _LUA_COMMON
    + """
local id, aor, limit, now, expires_at = ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5], ARGV[6]
if redis.call('EXISTS', p .. 'm:' .. id) == 1 then return 'duplicate' end
if redis.call('ZCOUNT', p .. 'ma:' .. aor, '(' .. now, '+inf') >= limit then return 'limit' end
local n = tonumber(ARGV[7])
local fields = {'seq', redis.call('INCR', p .. 'mseq')}
for i = 8, 7 + 2 * n do table.insert(fields, ARGV[i]) end
redis.call('HSET', p .. 'm:' .. id, unpack(fields))
redis.call('ZADD', p .. 'ma:' .. aor, expires_at, id)
redis.call('ZADD', p .. 'mexp', expires_at, id)
for i = 8 + 2 * n, #ARGV do redis.call('HSET', p .. 'md:' .. id, ARGV[i], '0') end
return 'ok'
"""
)

# ARGV: prefix, aor, device, now -> (fields of m:<id>) for each message not done by device.
_PENDING = """
local p, aor, device = ARGV[1], ARGV[2], ARGV[3]
local found = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', p .. 'ma:' .. aor, '(' .. ARGV[4], '+inf')) do
  if redis.call('HGET', p .. 'md:' .. id, device) ~= '1' then
    local fields = redis.call('HGETALL', p .. 'm:' .. id)
    if #fields > 0 then table.insert(found, fields) end
  end
end
return found
"""

# ARGV: prefix, id, device -> -1 no such message, 0 still pending elsewhere, 1 removed.
_MARK_DONE = (
    _LUA_COMMON
    + """
local id = ARGV[2]
if redis.call('EXISTS', p .. 'm:' .. id) == 0 then return -1 end
redis.call('HSET', p .. 'md:' .. id, ARGV[3], '1')
for _, done in ipairs(redis.call('HVALS', p .. 'md:' .. id)) do
  if done == '0' then return 0 end
end
remove(id)
return 1
"""
)

# ARGV: prefix, now -> number of messages deleted.
_PURGE = (
    _LUA_COMMON
    + """
local dead = redis.call('ZRANGEBYSCORE', p .. 'mexp', '-inf', ARGV[2])
for _, id in ipairs(dead) do remove(id) end
return #dead
"""
)

_OPTIONAL = ("chat_room_addr", "device")


class RedisMessageStore(MessageStore):
    """Stored MESSAGEs in Redis."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        """Use `RedisMessageStore.open()`."""
        self._redis = client
        self._prefix = prefix
        self._closed = False
        self._add = client.register_script(_ADD)
        self._pending = client.register_script(_PENDING)
        self._mark_done = client.register_script(_MARK_DONE)
        self._purge = client.register_script(_PURGE)

    @classmethod
    async def open(cls, url: str, prefix: str = "sipushd:") -> RedisMessageStore:
        """Connect to the Redis server at `url`; keys start with `prefix`."""
        return cls(await connect(url), prefix)

    async def add(
        self, message: StoredMessage, recipients: Sequence[str], *, limit: int, now: float
    ) -> None:
        """Store `message` pending for `recipients`; MessageLimitError when the AOR is full."""
        fields = _to_fields(message)
        args: list[str | bytes | int] = [
            self._prefix,
            message.id,
            message.aor,
            limit,
            repr(float(now)),
            repr(float(message.expires_at)),
            len(fields),
        ]
        for name, value in fields.items():
            args += [name, value]
        args += list(dict.fromkeys(recipients))
        async with self._using("message store update"):
            outcome = await self._add(args=args)
        if outcome == b"duplicate":
            raise DuplicateMessageError(f"message {message.id} is already stored")
        if outcome == b"limit":
            raise MessageLimitError(f"{message.aor} already has {limit} stored messages")

    async def pending(self, aor: str, device: str, now: float) -> list[StoredMessage]:
        """Live messages of `aor` that `device` is not done with, oldest first."""
        async with self._using("message store read"):
            rows = await self._pending(args=[self._prefix, aor, device, repr(float(now))])
        found: list[tuple[float, int, StoredMessage]] = []
        for row in cast(list[list[bytes]], rows):
            fields = dict(zip(row[::2], row[1::2], strict=True))
            message = _from_fields(fields)
            if message.device in (None, device) and not message.expired(now):
                found.append((message.arrived_at, int(fields[b"seq"]), message))
        found.sort(key=lambda item: item[:2])
        return [message for _, _, message in found]

    async def mark_done(self, message_id: str, device: str) -> bool:
        """Record `device` done; drop the message when nobody is pending."""
        async with self._using("message store update"):
            outcome = await self._mark_done(args=[self._prefix, message_id, device])
        return int(outcome) == 1

    async def waiting(self, message_id: str) -> list[str]:
        """The devices the message is still pending for, sorted."""
        async with self._using("message store read"):
            devices = await self._redis.hgetall(self._key("md:", message_id))
        states = cast(dict[bytes, bytes], devices)
        return sorted(device.decode() for device, done in states.items() if done == b"0")

    async def get(self, message_id: str) -> StoredMessage | None:
        """The stored message with that id, expired or not."""
        async with self._using("message store read"):
            fields = await self._redis.hgetall(self._key("m:", message_id))
        return _from_fields(cast(dict[bytes, bytes], fields)) if fields else None

    async def count(self, aor: str, now: float) -> int:
        """The number of live messages stored for `aor`."""
        async with self._using("message store read"):
            found = await self._redis.zcount(self._key("ma:", aor), f"({now!r}", "+inf")
        return int(found)

    async def total(self, now: float) -> int:
        """The number of live messages in the store."""
        async with self._using("message store read"):
            return int(await self._redis.zcount(self._key("mexp"), f"({now!r}", "+inf"))

    async def purge_expired(self, now: float) -> int:
        """Delete every expired message; return how many."""
        async with self._using("message store purge"):
            return int(await self._purge(args=[self._prefix, repr(float(now))]))

    async def close(self) -> None:
        """Close the connections."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()

    def _key(self, kind: str, name: str = "") -> str:
        return f"{self._prefix}{kind}{name}"

    @contextlib.asynccontextmanager
    async def _using(self, what: str) -> AsyncIterator[None]:
        if self._closed:
            raise StoreError("message store is closed")
        with redis_errors(what):
            yield


def _to_fields(m: StoredMessage) -> dict[str, str | bytes]:
    fields: dict[str, str | bytes] = {
        "id": m.id,
        "aor": m.aor,
        "call_id": m.call_id,
        "sender": m.sender,
        "arrived_at": repr(float(m.arrived_at)),
        "expires_at": repr(float(m.expires_at)),
        "data": m.data,
    }
    for name in _OPTIONAL:
        value = getattr(m, name)
        if value is not None:
            fields[name] = value
    return fields


def _from_fields(fields: dict[bytes, bytes]) -> StoredMessage:
    try:
        optional = {name: fields.get(name.encode()) for name in _OPTIONAL}
        return StoredMessage(
            id=fields[b"id"].decode(),
            aor=fields[b"aor"].decode(),
            call_id=fields[b"call_id"].decode(),
            sender=fields[b"sender"].decode(),
            arrived_at=float(fields[b"arrived_at"]),
            expires_at=float(fields[b"expires_at"]),
            data=bytes(fields[b"data"]),
            **{name: v.decode() if v is not None else None for name, v in optional.items()},
        )
    except (KeyError, ValueError) as exc:
        raise StoreError(f"unreadable message in Redis: {exc}") from exc
