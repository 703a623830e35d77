"""In-process binding store: the `BindingIndex` and a store that is only that.

One job: hold bindings in dicts, indexed by AOR and by push token. The
index is synchronous and does no I/O; `MemoryBindingStore` exposes it
through the async `BindingStore` interface (unit tests, single-node runs
without persistence) and `SqliteBindingStore` keeps one in front of its
file as a write-through mirror.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence

from sipushd.core.binding import Binding, drop_dead_token
from sipushd.store.base import BindingStore, StoreError

__all__ = ["BindingIndex", "MemoryBindingStore", "pick_instance", "soonest_expiring"]


def _order(binding: Binding) -> tuple[float, str]:
    return (binding.registered_at, binding.key)


class BindingIndex:
    """Bindings by AOR and key, plus a token -> (AOR, key) index."""

    def __init__(self) -> None:
        self._by_aor: dict[str, dict[str, Binding]] = {}
        # Token -> its holders, nearly always one. Tuples of strings, not sets: the
        # garbage collector stops tracking them, where it would scan a set every pass.
        self._by_token: dict[str, tuple[tuple[str, str], ...]] = {}

    def get(self, aor: str, now: float) -> list[Binding]:
        """The AOR's live bindings, oldest registration first."""
        found = self._by_aor.get(aor)
        if not found:
            return []
        return sorted((b for b in found.values() if not b.expired(now)), key=_order)

    def lookup(self, aor: str, key: str) -> Binding | None:
        """The binding `(aor, key)`, expired or not."""
        return self._by_aor.get(aor, {}).get(key)

    def check(self, aor: str, upserts: Sequence[Binding]) -> None:
        """Raise `StoreError` if an upsert belongs to another AOR."""
        for binding in upserts:
            if binding.aor != aor:
                raise StoreError(f"binding for {binding.aor} applied to {aor}")

    def apply(self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]) -> None:
        """Remove then upsert (call `check` first)."""
        for key in removals:
            self._discard(aor, key)
        for binding in upserts:
            self._discard(aor, binding.key)
            self._by_aor.setdefault(aor, {})[binding.key] = binding
            holder = (aor, binding.key)
            for token in binding.tokens:
                holders = self._by_token.get(token, ())
                if holder not in holders:
                    self._by_token[token] = (*holders, holder)

    def load(self, bindings: Iterable[Binding]) -> None:
        """Add bindings read from durable storage."""
        for binding in bindings:
            self.apply(binding.aor, (binding,), ())

    def with_token(self, token: str) -> list[Binding]:
        """Every binding holding `token`, expired or not."""
        found = [self.lookup(aor, key) for aor, key in self._by_token.get(token, ())]
        return sorted((b for b in found if b is not None), key=lambda b: (b.aor, *_order(b)))

    def without_token(self, token: str) -> list[Binding]:
        """What `remove_token` would store: the holders of `token` without it."""
        return [drop_dead_token(b, token) for b in self.with_token(token)]

    def expired(self, now: float) -> list[Binding]:
        """Every expired binding."""
        return [b for found in self._by_aor.values() for b in found.values() if b.expired(now)]

    def live(self, now: float) -> Iterable[Binding]:
        """Every live binding, in no particular order."""
        for found in self._by_aor.values():
            for binding in found.values():
                if not binding.expired(now):
                    yield binding

    def _discard(self, aor: str, key: str) -> None:
        found = self._by_aor.get(aor)
        if found is None:
            return
        old = found.pop(key, None)
        if not found:
            del self._by_aor[aor]
        if old is None:
            return
        holder = (aor, key)
        for token in old.tokens:
            holders = self._by_token.get(token, ())
            if holder in holders:
                rest = tuple(h for h in holders if h != holder)
                if rest:
                    self._by_token[token] = rest
                else:
                    del self._by_token[token]


class MemoryBindingStore(BindingStore):
    """A `BindingStore` that lives and dies with the process."""

    def __init__(self) -> None:
        self._index = BindingIndex()
        self._closed = False

    async def get(self, aor: str, now: float) -> list[Binding]:
        """The AOR's live bindings, oldest registration first."""
        return self.peek(aor, now)

    def peek(self, aor: str, now: float) -> list[Binding]:
        """`get()` without waiting: every read is served from memory."""
        self._check_open()
        return self._index.get(aor, now)

    async def apply(self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]) -> None:
        """Atomically upsert and remove bindings of one AOR."""
        await self.apply_soon(aor, upserts, removals)

    def apply_soon(
        self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]
    ) -> asyncio.Future[None]:
        """`apply()` done at once, its outcome in a finished future."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            self._check_open()
            self._index.check(aor, upserts)
            self._index.apply(aor, upserts, removals)
        except StoreError as exc:
            done.set_exception(exc)
        else:
            done.set_result(None)
        return done

    async def by_instance(self, aor: str, instance: str, now: float) -> Binding | None:
        """The live binding of `aor` with `+sip.instance` = `instance`."""
        self._check_open()
        return pick_instance(self._index.get(aor, now), instance)

    async def with_token(self, token: str, now: float) -> list[Binding]:
        """Every live binding holding `token`."""
        self._check_open()
        return [b for b in self._index.with_token(token) if not b.expired(now)]

    async def remove_token(self, token: str) -> list[Binding]:
        """Drop a dead push token everywhere; return the updated bindings."""
        self._check_open()
        updated = self._index.without_token(token)
        for binding in updated:
            self._index.apply(binding.aor, (binding,), ())
        return updated

    async def expiring(self, now: float, before: float) -> list[Binding]:
        """Live bindings that expire before `before`, soonest first."""
        self._check_open()
        return soonest_expiring(self._index.live(now), before)

    async def purge_expired(self, now: float) -> int:
        """Delete expired bindings; return how many."""
        self._check_open()
        dead = self._index.expired(now)
        for binding in dead:
            self._index.apply(binding.aor, (), (binding.key,))
        return len(dead)

    async def all_aors(self, now: float) -> list[str]:
        """Every AOR with a live binding, sorted."""
        self._check_open()
        return sorted({b.aor for b in self._index.live(now)})

    async def count(self, now: float) -> int:
        """The number of live bindings."""
        self._check_open()
        return sum(1 for _ in self._index.live(now))

    async def close(self) -> None:
        """Mark the store closed."""
        self._closed = True

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("binding store is closed")


def pick_instance(bindings: Iterable[Binding], instance: str) -> Binding | None:
    """The binding with `instance` (RFC 5626 §4.1); ties go to the latest refresh."""
    found = [b for b in bindings if b.instance == instance]
    return max(found, key=lambda b: b.updated_at) if found else None


def soonest_expiring(bindings: Iterable[Binding], before: float) -> list[Binding]:
    """The bindings that expire before `before`, soonest first."""
    return sorted((b for b in bindings if b.expires_at < before), key=lambda b: b.expires_at)
