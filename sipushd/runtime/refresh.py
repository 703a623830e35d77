"""Binding-refresh pushes (RFC 8599 §5.5): wake a device before its registration expires.

A phone whose app is asleep cannot re-REGISTER on time; unless it said it refreshes by
itself (`+sip.pnsreg`), sipushd sends it a background (APNs) or data (FCM) push shortly
before expiry. Each binding version (AOR, key, expiry) is pushed at most once; a
binding that expired or was removed is never pushed (the store returns live ones only).
Nodes sharing one store all scan it, so each push is claimed first
(`BindingStore.claim_refresh`): only the node whose claim wins sends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import structlog

from sipushd.core.payload import PushRequest
from sipushd.core.proxy import REFRESH_LEAD, refresh_due, refresh_push_for
from sipushd.push.base import PushResult
from sipushd.store.base import BindingStore, StoreError

log = structlog.get_logger("sipushd.refresh")


class PushSender(Protocol):
    """What the refresher needs of the push dispatcher."""

    def submit(self, request: PushRequest) -> asyncio.Future[PushResult]:
        """Queue one push."""
        ...


class RefreshPusher:
    """Looks for bindings about to expire every `interval` seconds and pushes them."""

    def __init__(
        self,
        store: BindingStore,
        pushes: PushSender,
        *,
        lead: float = REFRESH_LEAD,
        interval: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.pushes = pushes
        self.lead = lead
        self.interval = interval
        self.clock = clock
        self._sent: dict[tuple[str, str, float], float] = {}

    async def run(self) -> None:
        """Tick forever (cancel the task to stop)."""
        while True:
            try:
                await self.tick()
            except StoreError as exc:
                log.warning("binding refresh scan failed", error=str(exc))
            await asyncio.sleep(self.interval)

    async def tick(self) -> int:
        """One scan: push every binding whose refresh is due; return how many were pushed."""
        now = self.clock()
        # The scan window covers the next interval, so no binding slips between two ticks.
        candidates = await self.store.expiring(now, now + self.lead + self.interval)
        pushed = 0
        for binding in candidates:
            version = (binding.aor, binding.key, binding.expires_at)
            if version in self._sent or not refresh_due(binding, now, self.lead):
                continue
            push = refresh_push_for(binding)
            if push is None:
                continue
            self._sent[version] = binding.expires_at
            try:
                claimed = await self.store.claim_refresh(binding, now)
            except StoreError:
                del self._sent[version]  # ask again on the next scan
                raise
            if not claimed:
                continue  # another node sends this one
            self.pushes.submit(push)
            pushed += 1
            log.debug("binding refresh push", aor=binding.aor, instance=binding.instance)
        # Forget versions whose binding has expired anyway.
        self._sent = {k: exp for k, exp in self._sent.items() if exp > now}
        return pushed
