"""The registrar service: REGISTER in, bindings stored, 2xx out, "binding registered" events.

It joins the pure `Registrar` decisions to the binding store and the auth gate. REGISTERs
of one AOR are serialised (read bindings, decide, write) so two devices registering at
once cannot lose each other's binding. Listeners of `on_registered` (the proxy) hear about
every binding added or refreshed, after it is stored and before the 2xx leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection

import structlog

from sipushd import metrics
from sipushd.core.binding import Binding
from sipushd.core.registrar import Registrar
from sipushd.runtime.authgate import AuthGate
from sipushd.runtime.server import ServerCore, new_tag
from sipushd.sip import Endpoint, Request, SipParseError
from sipushd.sip.transaction import TransactionKey
from sipushd.store.base import BindingStore, StoreError

log = structlog.get_logger("sipushd.registrar")
# The stdlib logger behind `log`: a filtered debug call still costs a structlog bind.
_stdlib_log = logging.getLogger("sipushd.registrar")
_RESULTS = metrics.REGISTER_RESULTS.counts


def _count_result(status: int) -> None:
    label = str(status)
    _RESULTS[label] = _RESULTS.get(label, 0) + 1


BindingListener = Callable[[Binding], None]


class RegistrarService:
    """Handles REGISTER for the served domains."""

    def __init__(
        self,
        server: ServerCore,
        store: BindingStore,
        registrar: Registrar,
        *,
        domains: Collection[str],
        supported_providers: Collection[str],
        auth: AuthGate | None,
        clock: Callable[[], float],
    ) -> None:
        self.server = server
        self.store = store
        self.registrar = registrar
        self.domains = frozenset(d.lower() for d in domains)
        self.supported_providers = frozenset(supported_providers)
        self.auth = auth
        self.clock = clock
        self.on_registered: list[BindingListener] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        """ServerCore handler for REGISTER."""
        task = asyncio.create_task(self._register(request, source, key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _register(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        try:
            aor = request.to.uri.aor
        except SipParseError:
            self._reply(key, request, 400, "Bad To Header")
            return
        ruri = request.uri
        if ruri.scheme not in ("sip", "sips") or ruri.host.lower() not in self.domains:
            # §10.3 step 1 comes before authentication (step 3): never challenge for a
            # domain we do not serve.
            self._reply(key, request, 403, "Domain Not Served Here")
            return
        if self.auth is not None and not self._authorised(request, source, key):
            return
        lock = self._locks.get(aor)
        if lock is None:
            lock = self._locks[aor] = asyncio.Lock()
        try:
            async with lock:
                await self._decide_and_store(aor, request, source, key)
        finally:
            if not lock.locked() and self._locks.get(aor) is lock:
                del self._locks[aor]

    def _authorised(self, request: Request, source: Endpoint, key: TransactionKey) -> bool:
        assert self.auth is not None
        verdict = self.auth.check(request, source)
        if not verdict.passed:
            self._reply(key, request, verdict.status, verdict.reason, verdict.headers)
            return False
        user = request.to.uri.user
        if verdict.username is not None and verdict.username != user:
            # §10.3 step 3: an authenticated user may only change the bindings it may.
            self._reply(key, request, 403, "Not Your Address Of Record")
            return False
        return True

    async def _decide_and_store(
        self, aor: str, request: Request, source: Endpoint, key: TransactionKey
    ) -> None:
        now = self.clock()
        try:
            current = await self.store.get(aor, now)
            decision = self.registrar.decide(
                request,
                source,
                current,
                now,
                domains=self.domains,
                supported_providers=self.supported_providers,
            )
            if decision.ok and (decision.upserts or decision.removals):
                await self.store.apply(aor, decision.upserts, decision.removal_keys)
        except StoreError as exc:
            # §10.3 step 7: the update failed, so the REGISTER fails with 500.
            log.error("binding store failed", aor=aor, error=str(exc))
            self._reply(key, request, 500, "Binding Store Unavailable")
            return
        for binding in decision.registered:
            for listener in self.on_registered:
                try:
                    listener(binding)
                except Exception:
                    log.exception("binding listener failed", aor=aor)
        response = decision.response(request, to_tag=new_tag())
        _count_result(decision.status)
        if decision.ok and _stdlib_log.isEnabledFor(logging.DEBUG):
            log.debug(
                "registered",
                aor=aor,
                bindings=len(decision.bindings),
                peer=f"{source.transport}:{source.host}:{source.port}",
            )
        elif not decision.ok:
            log.info("register refused", aor=aor, status=decision.status, reason=decision.reason)
        self.server.engine.respond(key, response)

    def _reply(
        self,
        key: TransactionKey,
        request: Request,
        status: int,
        reason: str | None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        _count_result(status)
        self.server.reply(key, request, status, reason, headers)

    async def close(self) -> None:
        """Wait for REGISTERs in progress."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
