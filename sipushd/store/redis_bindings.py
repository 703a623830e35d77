"""Redis binding store: several sipushd nodes share one location service.

One job: the `BindingStore` contract on a Redis server, plus a pub/sub event
when a binding is registered so the node holding an INVITE hears about a
REGISTER that reached another node.

Design choices:
- Keys, under the configured prefix `P`: `P b:<aor>` hash of binding key ->
  document; `P exp` sorted set of bindings by `expires_at` (purge, expiring,
  count); `P t:<token>` set of the bindings holding a push token. A binding
  is named in the sets by `<len(aor)>:<aor><key>`, built only inside the Lua
  scripts. `by_instance` reads the AOR's hash: it holds at most
  `max_contacts_per_aor` bindings, so an instance index would not save a
  round trip.
- Every write is one Lua script, so the binding and all its index entries
  change together (Redis runs a script atomically). Inputs are checked
  before the script runs: Redis does not roll back a script that fails
  half-way. The keys are built inside the scripts, so this needs a single
  Redis server (or a primary with replicas), not Redis Cluster.
- No process-local cache: every read goes to Redis, so a node never serves
  a binding another node has replaced.
- A flow id names a connection of the process that stored it. Each store
  object has a random node id, kept in the document next to the binding;
  a binding written by another node (or an earlier process) is read with
  `flow.flow = None`.
- Writes of one store object run one at a time in call order (one lock);
  nodes do not serialise their REGISTERs of one AOR against each other, but
  each binding key is written on its own, so they never drop each other's
  bindings.
- Path (RFC 3327): once the app sets `paths` (the node's advertised address,
  `sipushd.core.cluster`), `apply()` writes this node as the first Path entry
  of each upsert, so other nodes reach the phone's flow through it; reads drop
  that entry again, so a node never routes through itself.
- `claim_refresh()` is `SET P r:<aor><key>@<expires_at> NX PX <until expiry>`:
  the first node to ask sends the binding-refresh push, the others skip it.
- `apply()` with upserts publishes `{"node", "aor", "bindings"}` on
  `P events` from inside its script (only when the write happened).
  `subscribe(callback)` hears the events of other nodes; an event published
  while the subscriber is disconnected is lost (the phone's next REGISTER
  carries the news again).
- Durability is Redis's: use `appendonly yes` for bindings to survive a
  Redis restart (phones re-register anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import cast

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from sipushd.core.binding import Binding, binding_from_json, binding_to_json, drop_dead_token
from sipushd.core.cluster import ClusterPaths
from sipushd.store.base import BindingStore, StoreError
from sipushd.store.memory import pick_instance

__all__ = ["BindingEventListener", "RedisBindingStore", "connect", "redis_errors"]

BindingEventListener = Callable[[Binding], None]

# Shared Lua helpers. ARGV[1] is always the key prefix.
_LUA_COMMON = """
local p = ARGV[1]
local function member(aor, key) return #aor .. ':' .. aor .. key end
local function split(m)
  local n, rest = string.match(m, '^(%d+):(.*)$')
  n = tonumber(n)
  return string.sub(rest, 1, n), string.sub(rest, n + 1)
end
local function drop(aor, key)
  local hkey = p .. 'b:' .. aor
  local old = redis.call('HGET', hkey, key)
  if not old then return 0 end
  local m = member(aor, key)
  for _, t in ipairs(cjson.decode(old).tokens) do redis.call('SREM', p .. 't:' .. t, m) end
  redis.call('HDEL', hkey, key)
  redis.call('ZREM', p .. 'exp', m)
  return 1
end
local function put(aor, key, doc, expires_at)
  drop(aor, key)
  local m = member(aor, key)
  redis.call('HSET', p .. 'b:' .. aor, key, doc)
  redis.call('ZADD', p .. 'exp', expires_at, m)
  for _, t in ipairs(cjson.decode(doc).tokens) do redis.call('SADD', p .. 't:' .. t, m) end
end
local function docs(members)
  local found = {}
  for _, m in ipairs(members) do
    local aor, key = split(m)
    local doc = redis.call('HGET', p .. 'b:' .. aor, key)
    if doc then table.insert(found, doc) end
  end
  return found
end
"""

# ARGV: prefix, aor, event ('' for none), n removals, removal keys..., (key, doc, expires_at)...
_APPLY = (
    _LUA_COMMON
    + """
local aor, event, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
for i = 5, 4 + n do drop(aor, ARGV[i]) end
for i = 5 + n, #ARGV, 3 do put(aor, ARGV[i], ARGV[i + 1], ARGV[i + 2]) end
if event ~= '' then redis.call('PUBLISH', p .. 'events', event) end
return 1
"""
)

# ARGV: prefix, (aor, key, expected doc, new doc, expires_at)... -> 0 when a doc changed.
_REPLACE = (
    _LUA_COMMON
    + """
for i = 2, #ARGV, 5 do
  if redis.call('HGET', p .. 'b:' .. ARGV[i], ARGV[i + 1]) ~= ARGV[i + 2] then return 0 end
end
for i = 2, #ARGV, 5 do put(ARGV[i], ARGV[i + 1], ARGV[i + 3], ARGV[i + 4]) end
return 1
"""
)

# ARGV: prefix, now -> number of bindings deleted.
_PURGE = (
    _LUA_COMMON
    + """
local dead = redis.call('ZRANGEBYSCORE', p .. 'exp', '-inf', ARGV[2])
for _, m in ipairs(dead) do
  local aor, key = split(m)
  if drop(aor, key) == 0 then redis.call('ZREM', p .. 'exp', m) end
end
return #dead
"""
)

# ARGV: prefix, token -> the documents of its holders.
_WITH_TOKEN = _LUA_COMMON + "return docs(redis.call('SMEMBERS', p .. 't:' .. ARGV[2]))"

# ARGV: prefix, min, max (score range) -> the documents of bindings expiring in it.
_EXPIRING = _LUA_COMMON + "return docs(redis.call('ZRANGEBYSCORE', p .. 'exp', ARGV[2], ARGV[3]))"

# ARGV: prefix, now -> the AOR of every live binding (with repeats).
_LIVE_AORS = (
    _LUA_COMMON
    + """
local aors = {}
for _, m in ipairs(redis.call('ZRANGEBYSCORE', p .. 'exp', '(' .. ARGV[2], '+inf')) do
  local aor, _ = split(m)
  table.insert(aors, aor)
end
return aors
"""
)


def redis_errors(what: str) -> contextlib.AbstractContextManager[None]:
    """Turn Redis and socket errors into `StoreError` naming `what` failed."""
    return _ErrorsAsStoreError(what)


class _ErrorsAsStoreError(contextlib.AbstractContextManager[None]):
    def __init__(self, what: str) -> None:
        self.what = what

    def __exit__(self, kind: object, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, RedisError | OSError):
            raise StoreError(f"{self.what} failed: {exc}") from exc


async def connect(url: str) -> aioredis.Redis:
    """A client for `url`, checked with PING; `StoreError` when the server does not answer."""
    client = aioredis.Redis.from_url(url, decode_responses=False)
    try:
        with redis_errors(f"connecting to {_safe(url)}"):
            await client.ping()
    except StoreError:
        await client.aclose()
        raise
    return client


def _safe(url: str) -> str:
    """`url` without its password."""
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rpartition('@')[2]}"


def _score(value: float) -> str:
    return repr(float(value))


def _order(binding: Binding) -> tuple[float, str]:
    return (binding.registered_at, binding.key)


class RedisBindingStore(BindingStore):
    """Bindings in Redis, shared by every node that uses the same server and prefix."""

    def __init__(self, client: aioredis.Redis, prefix: str, node: str | None = None) -> None:
        """Use `RedisBindingStore.open()`."""
        self._redis = client
        self._prefix = prefix
        self.node = node or secrets.token_hex(8)
        # This node's Path entries; set once the listeners are bound (None: no entry).
        self.paths: ClusterPaths | None = None
        self._writes = asyncio.Lock()
        self._closed = False
        self._listeners: list[BindingEventListener] = []
        self._pubsub: PubSub | None = None
        self._listener_task: asyncio.Task[None] | None = None
        self._apply = client.register_script(_APPLY)
        self._replace = client.register_script(_REPLACE)
        self._purge = client.register_script(_PURGE)
        self._with_token = client.register_script(_WITH_TOKEN)
        self._expiring = client.register_script(_EXPIRING)
        self._live_aors = client.register_script(_LIVE_AORS)

    @classmethod
    async def open(cls, url: str, prefix: str = "sipushd:") -> RedisBindingStore:
        """Connect to the Redis server at `url`; keys start with `prefix`."""
        return cls(await connect(url), prefix)

    @property
    def channel(self) -> str:
        """The pub/sub channel of binding-registered events."""
        return f"{self._prefix}events"

    async def get(self, aor: str, now: float) -> list[Binding]:
        """The AOR's live bindings, oldest registration first."""
        async with self._reading("binding read"):
            raw = await self._redis.hgetall(self._aor_key(aor))
        found = (self._decode(doc) for doc in cast(dict[bytes, bytes], raw).values())
        return sorted((b for b in found if not b.expired(now)), key=_order)

    async def apply(self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]) -> None:
        """Atomically upsert and remove bindings of one AOR; publish the upserts."""
        self._check_open()
        for binding in upserts:
            if binding.aor != aor:
                raise StoreError(f"binding for {binding.aor} applied to {aor}")
        if self.paths is not None:
            upserts = [self.paths.stamp(b) for b in upserts]
        event = ""
        if upserts:
            event = _dumps(
                {"node": self.node, "aor": aor, "bindings": [binding_to_json(b) for b in upserts]}
            )
        args: list[str | float] = [self._prefix, aor, event, len(removals), *removals]
        for binding in upserts:
            args += [binding.key, self._encode(binding, self.node), _score(binding.expires_at)]
        async with self._writing("binding update"):
            await self._apply(args=args)

    async def by_instance(self, aor: str, instance: str, now: float) -> Binding | None:
        """The live binding of `aor` with `+sip.instance` = `instance`."""
        return pick_instance(await self.get(aor, now), instance)

    async def with_token(self, token: str, now: float) -> list[Binding]:
        """Every live binding holding `token`."""
        async with self._reading("binding read"):
            docs = await self._with_token(args=[self._prefix, token])
        found = (self._decode(doc) for doc in cast(list[bytes], docs))
        return _by_aor(b for b in found if not b.expired(now) and token in b.tokens)

    async def remove_token(self, token: str) -> list[Binding]:
        """Drop a dead push token everywhere; return the updated bindings."""
        async with self._writing("push token removal"):
            while True:
                docs = cast(list[bytes], await self._with_token(args=[self._prefix, token]))
                args: list[str | bytes] = [self._prefix]
                updated: list[Binding] = []
                for doc in docs:
                    stored, node = self._decode_stored(doc)
                    if token not in stored.tokens:
                        continue
                    new = drop_dead_token(stored, token)
                    args += [new.aor, new.key, doc, self._encode(new, node)]
                    args.append(_score(new.expires_at))
                    updated.append(self._ours(new, node))
                # Another node changed a holder since the read: read again.
                if len(args) == 1 or await self._replace(args=args):
                    return _by_aor(updated)

    async def expiring(self, now: float, before: float) -> list[Binding]:
        """Live bindings that expire before `before`, soonest first."""
        span = [f"({_score(now)}", f"({_score(before)}"]  # open interval: live, not yet due
        async with self._reading("binding read"):
            docs = await self._expiring(args=[self._prefix, *span])
        found = [self._decode(doc) for doc in cast(list[bytes], docs)]
        live = [b for b in found if not b.expired(now) and b.expires_at < before]
        return sorted(live, key=lambda b: b.expires_at)

    async def claim_refresh(self, binding: Binding, now: float) -> bool:
        """True for the first node to claim this binding version's refresh push."""
        name = f"r:{len(binding.aor)}:{binding.aor}{binding.key}@{_score(binding.expires_at)}"
        ttl = max(1, math.ceil((binding.expires_at - now) * 1000))  # ms, until it expires
        async with self._reading("refresh claim"):
            return bool(await self._redis.set(self._key(name), self.node, nx=True, px=ttl))

    async def purge_expired(self, now: float) -> int:
        """Delete every expired binding; return how many."""
        async with self._writing("binding purge"):
            return int(await self._purge(args=[self._prefix, _score(now)]))

    async def all_aors(self, now: float) -> list[str]:
        """Every AOR with a live binding, sorted."""
        async with self._reading("binding read"):
            aors = await self._live_aors(args=[self._prefix, _score(now)])
        return sorted({a.decode() for a in cast(list[bytes], aors)})

    async def count(self, now: float) -> int:
        """The number of live bindings."""
        async with self._reading("binding read"):
            return int(await self._redis.zcount(self._key("exp"), f"({_score(now)}", "+inf"))

    async def subscribe(self, listener: BindingEventListener) -> None:
        """Call `listener` for each binding another node registers, from now on."""
        self._check_open()
        self._listeners.append(listener)
        if self._pubsub is not None:
            return
        self._pubsub = pubsub = self._redis.pubsub()
        async with self._reading("event subscription"):
            await pubsub.subscribe(self.channel)
            # Wait for the server's confirmation: later events are then ours.
            while not await _confirmed(pubsub):
                pass
        self._listener_task = asyncio.get_running_loop().create_task(self._listen(pubsub))

    async def close(self) -> None:
        """Stop listening for events and close the connections."""
        if self._closed:
            return
        self._closed = True
        if self._listener_task is not None:
            self._listener_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener_task
        async with self._writes:  # writes already queued finish first
            if self._pubsub is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._pubsub.aclose()  # type: ignore[no-untyped-call]
            with contextlib.suppress(RedisError, OSError):
                await self._redis.aclose()

    # --- internals -------------------------------------------------------------------

    async def _listen(self, pubsub: PubSub) -> None:
        """Deliver events of other nodes to the listeners until closed."""
        while True:
            try:
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._deliver(message["data"])
                return  # unsubscribed
            except (RedisError, OSError):
                # The client reconnects and subscribes again on the next read.
                await asyncio.sleep(1.0)

    def _deliver(self, data: bytes) -> None:
        try:
            event = json.loads(data)
            if event["node"] == self.node:
                return
            node = str(event["node"])
            bindings = [self._ours(binding_from_json(b), node) for b in event["bindings"]]
        except (ValueError, KeyError, TypeError):
            return  # not an event this version understands
        for binding in bindings:
            for listener in list(self._listeners):
                with contextlib.suppress(Exception):  # a listener's failure is its own
                    listener(binding)

    def _key(self, name: str) -> str:
        return f"{self._prefix}{name}"

    def _aor_key(self, aor: str) -> str:
        return f"{self._prefix}b:{aor}"

    def _encode(self, binding: Binding, node: str) -> str:
        tokens = sorted(binding.tokens)
        return _dumps({"binding": binding_to_json(binding), "node": node, "tokens": tokens})

    def _decode_stored(self, doc: bytes) -> tuple[Binding, str]:
        """The binding as stored (flow id untouched) and the node that wrote it."""
        try:
            data = json.loads(doc)
            return binding_from_json(data["binding"]), str(data["node"])
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable binding in Redis: {exc}") from exc

    def _decode(self, doc: bytes) -> Binding:
        return self._ours(*self._decode_stored(doc))

    def _ours(self, binding: Binding, node: str) -> Binding:
        if self.paths is not None:
            binding = self.paths.own(binding)
        return binding if node == self.node else _without_flow(binding)

    @contextlib.asynccontextmanager
    async def _reading(self, what: str) -> AsyncIterator[None]:
        self._check_open()
        with redis_errors(what):
            yield

    @contextlib.asynccontextmanager
    async def _writing(self, what: str) -> AsyncIterator[None]:
        self._check_open()
        async with self._writes:
            with redis_errors(what):
                yield

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("binding store is closed")


async def _confirmed(pubsub: PubSub) -> bool:
    """True once the server confirmed the subscription."""
    reply = await pubsub.get_message(timeout=5.0)
    if reply is None:
        raise StoreError("no subscription confirmation from Redis")
    return bool(reply.get("type") == "subscribe")


def _without_flow(binding: Binding) -> Binding:
    if binding.flow.flow is None:
        return binding
    return binding.replace(flow=binding.flow.replace(flow=None))


def _by_aor(bindings: Iterable[Binding]) -> list[Binding]:
    return sorted(bindings, key=lambda b: (b.aor, *_order(b)))


def _dumps(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))
