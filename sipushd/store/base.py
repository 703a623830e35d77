"""The binding store interface every backend implements.

One job: say what the registrar and the proxy may ask of a location
service. Rules shared by all backends (the contract tests check them):

- Reads take `now` and never return an expired binding.
- `apply()` is atomic: either every upsert and removal of the call is
  visible afterwards, or none is and it raises `StoreError` (RFC 3261 §10.3
  step 7: the registrar then answers 500).
- A binding is identified by `(aor, key)`; an upsert replaces the binding
  with the same key.
- Callers serialise `get()` + `apply()` per AOR themselves; the store does
  not detect lost updates between the two.
- `claim_refresh()` picks the one node that sends a binding's refresh push
  when several share the store; a store of one process grants every claim.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence

from sipushd.core.binding import Binding, gruu_instance
from sipushd.sip import SipParseError, parse_uri

__all__ = ["BindingStore", "StoreError"]


class StoreError(Exception):
    """The backend could not read or commit; nothing was changed."""


class BindingStore(ABC):
    """Async location service: AOR -> bindings."""

    @abstractmethod
    async def get(self, aor: str, now: float) -> list[Binding]:
        """The AOR's live bindings, oldest registration first."""

    @abstractmethod
    async def apply(self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]) -> None:
        """Atomically upsert `upserts` and remove the bindings keyed `removals` of one AOR."""

    def peek(self, aor: str, now: float) -> list[Binding] | None:
        """`get()` answered at once when the store reads from memory, else None.

        Lets the registrar handle a REGISTER without a task of its own when the store
        need not be waited for; a None means "call `get()`".
        """
        return None

    def apply_soon(
        self, aor: str, upserts: Sequence[Binding], removals: Sequence[str]
    ) -> asyncio.Future[None]:
        """`apply()` as a future, for a caller that goes on in a done-callback."""
        return asyncio.ensure_future(self.apply(aor, upserts, removals))

    @abstractmethod
    async def by_instance(self, aor: str, instance: str, now: float) -> Binding | None:
        """The live binding of `aor` registered with `+sip.instance` = `instance`."""

    @abstractmethod
    async def with_token(self, token: str, now: float) -> list[Binding]:
        """Every live binding whose push target holds `token` (any service)."""

    @abstractmethod
    async def remove_token(self, token: str) -> list[Binding]:
        """Drop a dead push token from every binding holding it; return the updated bindings."""

    @abstractmethod
    async def expiring(self, now: float, before: float) -> list[Binding]:
        """Live bindings that expire before `before` (binding-refresh pushes, RFC 8599 §5.5)."""

    @abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Delete every expired binding; return how many."""

    @abstractmethod
    async def all_aors(self, now: float) -> list[str]:
        """Every AOR with at least one live binding, sorted."""

    @abstractmethod
    async def count(self, now: float) -> int:
        """The number of live bindings."""

    @abstractmethod
    async def close(self) -> None:
        """Release the backend; the store is unusable afterwards."""

    async def claim_refresh(self, binding: Binding, now: float) -> bool:
        """True when this node is the one to send `binding`'s refresh push (RFC 8599 §5.5).

        Claims are per binding version (AOR, key, expiry): a refreshed binding is a new
        one to claim. Only shared stores can refuse.
        """
        return True

    async def by_gruu(self, gruu: str, now: float) -> Binding | None:
        """The live binding a public GRUU (`AOR;gr=urn:uuid:...`, RFC 5627) names."""
        try:
            target = gruu_instance(parse_uri(gruu))
        except SipParseError:
            return None
        if target is None:
            return None
        return await self.by_instance(target[0], target[1], now)
