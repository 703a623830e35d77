"""The message store interface, and the in-process backend.

One job: keep MESSAGEs for the devices of an AOR until each device got them
(see `sipushd.core.messages` for the rules). Rules every backend follows
(the contract tests check them):

- `add()` is atomic with its per-AOR limit: it stores the message and one
  pending mark per recipient device, or raises `MessageLimitError` when the
  AOR already holds `limit` live messages, `DuplicateMessageError` when the
  id is taken (nothing stored).
- `pending(aor, device, now)` lists, oldest first (arrival time, then
  insertion order), the live messages of `aor` the device is not done with:
  those it is a recipient of, and those it has never been told about (a
  device registering for the first time while a message is still stored),
  except messages addressed to another single device (`StoredMessage.device`).
- `mark_done(id, device)` records the device done; the message leaves the
  store once no device it was stored for is pending.
- Reads take `now` and never return an expired message; `purge_expired`
  deletes them.
- Durable backends keep everything across a restart.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from sipushd.core.messages import StoredMessage
from sipushd.store.base import StoreError

__all__ = ["DuplicateMessageError", "MemoryMessageStore", "MessageLimitError", "MessageStore"]


class MessageLimitError(StoreError):
    """The AOR already holds its maximum number of stored messages; nothing was stored."""


class DuplicateMessageError(StoreError):
    """A message with the same id is already stored; nothing was changed."""


class MessageStore(ABC):
    """Async store of MESSAGEs waiting for the devices of an AOR."""

    @abstractmethod
    async def add(
        self, message: StoredMessage, recipients: Sequence[str], *, limit: int, now: float
    ) -> None:
        """Store `message` pending for each device in `recipients`, within the AOR's `limit`."""

    @abstractmethod
    async def pending(self, aor: str, device: str, now: float) -> list[StoredMessage]:
        """Live messages of `aor` that `device` is not done with, oldest first."""

    def may_have_pending(self, aor: str) -> bool:
        """False only when `pending(aor, ...)` called now would certainly find nothing.

        A hint for callers that would start work just to ask; True is always correct.
        """
        return True

    @abstractmethod
    async def mark_done(self, message_id: str, device: str) -> bool:
        """Record `device` done with the message; True when the message left the store."""

    @abstractmethod
    async def waiting(self, message_id: str) -> list[str]:
        """The devices the message is still pending for, sorted ([] when it is gone)."""

    @abstractmethod
    async def get(self, message_id: str) -> StoredMessage | None:
        """The stored message with that id, expired or not."""

    @abstractmethod
    async def count(self, aor: str, now: float) -> int:
        """The number of live messages stored for `aor`."""

    @abstractmethod
    async def total(self, now: float) -> int:
        """The number of live messages in the store."""

    @abstractmethod
    async def purge_expired(self, now: float) -> int:
        """Delete every expired message; return how many."""

    @abstractmethod
    async def close(self) -> None:
        """Release the backend; the store is unusable afterwards."""


@dataclass
class _Entry:
    message: StoredMessage
    seq: int
    devices: dict[str, bool] = field(default_factory=dict)  # device -> done


class MemoryMessageStore(MessageStore):
    """A `MessageStore` that lives and dies with the process."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._by_aor: dict[str, dict[str, _Entry]] = {}
        self._seq = itertools.count()
        self._closed = False

    async def add(
        self, message: StoredMessage, recipients: Sequence[str], *, limit: int, now: float
    ) -> None:
        """Store `message` pending for `recipients`; MessageLimitError when the AOR is full."""
        self._check_open()
        if message.id in self._entries:
            raise DuplicateMessageError(f"message {message.id} is already stored")
        if self._live_count(message.aor, now) >= limit:
            raise MessageLimitError(f"{message.aor} already has {limit} stored messages")
        entry = _Entry(message, next(self._seq), dict.fromkeys(recipients, False))
        self._entries[message.id] = entry
        self._by_aor.setdefault(message.aor, {})[message.id] = entry

    async def pending(self, aor: str, device: str, now: float) -> list[StoredMessage]:
        """Live messages of `aor` that `device` is not done with, oldest first."""
        self._check_open()
        entries = [
            e
            for e in self._by_aor.get(aor, {}).values()
            if not e.message.expired(now)
            and not e.devices.get(device, False)
            and e.message.device in (None, device)
        ]
        entries.sort(key=lambda e: (e.message.arrived_at, e.seq))
        return [e.message for e in entries]

    async def mark_done(self, message_id: str, device: str) -> bool:
        """Record `device` done; drop the message when nobody is pending."""
        self._check_open()
        entry = self._entries.get(message_id)
        if entry is None:
            return False
        entry.devices[device] = True
        if any(not done for done in entry.devices.values()):
            return False
        self._remove(entry)
        return True

    async def waiting(self, message_id: str) -> list[str]:
        """The devices the message is still pending for, sorted."""
        self._check_open()
        entry = self._entries.get(message_id)
        if entry is None:
            return []
        return sorted(device for device, done in entry.devices.items() if not done)

    async def get(self, message_id: str) -> StoredMessage | None:
        """The stored message with that id, expired or not."""
        self._check_open()
        entry = self._entries.get(message_id)
        return entry.message if entry is not None else None

    async def count(self, aor: str, now: float) -> int:
        """The number of live messages stored for `aor`."""
        self._check_open()
        return self._live_count(aor, now)

    async def total(self, now: float) -> int:
        """The number of live messages in the store."""
        self._check_open()
        return sum(1 for e in self._entries.values() if not e.message.expired(now))

    async def purge_expired(self, now: float) -> int:
        """Delete every expired message; return how many."""
        self._check_open()
        dead = [e for e in self._entries.values() if e.message.expired(now)]
        for entry in dead:
            self._remove(entry)
        return len(dead)

    async def close(self) -> None:
        """Mark the store closed."""
        self._closed = True

    def _live_count(self, aor: str, now: float) -> int:
        return sum(1 for e in self._by_aor.get(aor, {}).values() if not e.message.expired(now))

    def _remove(self, entry: _Entry) -> None:
        self._entries.pop(entry.message.id, None)
        found = self._by_aor.get(entry.message.aor)
        if found is not None:
            found.pop(entry.message.id, None)
            if not found:
                del self._by_aor[entry.message.aor]

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("message store is closed")
