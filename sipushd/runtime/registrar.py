"""The registrar service: REGISTER in, bindings stored, 2xx out, "binding registered" events.

It joins the pure `Registrar` decisions to the binding store and the auth gate. REGISTERs
of one AOR are serialised (read bindings, decide, write) so two devices registering at
once cannot lose each other's binding. Listeners of `on_registered` (the proxy) hear about
every binding added or refreshed, after it is stored and before the 2xx leaves.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import Final

import structlog

from sipushd import metrics
from sipushd.core.binding import Binding
from sipushd.core.registrar import RegisterDecision, Registrar
from sipushd.runtime.authgate import AuthGate
from sipushd.runtime.server import ServerCore, new_tag
from sipushd.sip import Endpoint, Headers, Request, Response, SipParseError
from sipushd.sip.transaction import TransactionKey
from sipushd.store.base import BindingStore, StoreError

log = structlog.get_logger("sipushd.registrar")
# The stdlib logger behind `log`: a filtered debug call still costs a structlog bind.
_stdlib_log = logging.getLogger("sipushd.registrar")


def _count_result(status: int) -> None:
    metrics.REGISTER_RESULTS.add(str(status))


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
        # AOR -> REGISTERs waiting for the one in progress (read, decide, write) to finish.
        self._queued: dict[str, deque[_Pending]] = {}
        self._in_progress = 0
        self._idle: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def handle(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        """ServerCore handler for REGISTER.

        With a store that reads from memory, a REGISTER is decided at once and answered
        from the commit's done-callback: no task, no lock. REGISTERs of one AOR still run
        one at a time, in arrival order, so two devices registering together cannot lose
        each other's binding.
        """
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
        pending = _Pending(aor, request, source, key)
        queue = self._queued.get(aor)
        if queue is not None:
            queue.append(pending)
            return
        self._queued[aor] = deque()
        self._in_progress += 1
        self._start(pending)

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

    def _start(self, pending: _Pending) -> None:
        """Read the AOR's bindings (from memory when the store can), then decide."""
        now = self.clock()
        try:
            current = self.store.peek(pending.aor, now)
            if current is None:
                task = asyncio.get_running_loop().create_task(self._read(pending, now))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            self._decide(pending, current, now)
        except StoreError as exc:
            self._store_failed(pending, exc)
        except Exception:
            self._crashed(pending)

    async def _read(self, pending: _Pending, now: float) -> None:
        try:
            current = await self.store.get(pending.aor, now)
            self._decide(pending, current, now)
        except StoreError as exc:
            self._store_failed(pending, exc)
        except Exception:
            self._crashed(pending)

    def _decide(self, pending: _Pending, current: list[Binding], now: float) -> None:
        request = pending.request
        decision = self.registrar.decide(
            request,
            pending.source,
            current,
            now,
            domains=self.domains,
            supported_providers=self.supported_providers,
        )
        response = decision.response(request, to_tag=new_tag())
        decided = _Decided(pending.aor, pending.key, pending.source, decision, response)
        if not (decision.ok and (decision.upserts or decision.removals)):
            self._answer(decided)
            return
        # Only the answer waits for the commit: under load hundreds of REGISTERs wait for
        # one, and a parsed request is far more objects for the garbage collector to scan.
        commit = self.store.apply_soon(pending.aor, decision.upserts, decision.removal_keys)
        commit.add_done_callback(functools.partial(self._committed, decided))

    def _committed(self, decided: _Decided, commit: asyncio.Future[None]) -> None:
        exc = commit.exception() if not commit.cancelled() else StoreError("commit cancelled")
        if exc is not None:
            log.error("binding store failed", aor=decided.aor, error=str(exc))
            self._fail(decided, 500, "Binding Store Unavailable")
            return
        try:
            for binding in decided.decision.registered:
                for listener in self.on_registered:
                    try:
                        listener(binding)
                    except Exception:
                        log.exception("binding listener failed", aor=decided.aor)
            self._answer(decided)
        except Exception:
            log.exception("REGISTER failed", aor=decided.aor)
            self._fail(decided, 500, "Server Internal Error")

    def _answer(self, decided: _Decided) -> None:
        decision, source = decided.decision, decided.source
        _count_result(decision.status)
        if decision.ok and _stdlib_log.isEnabledFor(logging.DEBUG):
            log.debug(
                "registered",
                aor=decided.aor,
                bindings=len(decision.bindings),
                peer=f"{source.transport}:{source.host}:{source.port}",
            )
        elif not decision.ok:
            log.info(
                "register refused",
                aor=decided.aor,
                status=decision.status,
                reason=decision.reason,
            )
        self.server.engine.respond(decided.key, decided.response)
        self._next(decided.aor)

    def _fail(self, decided: _Decided, status: int, reason: str) -> None:
        """Answer `status` instead of the prepared response (the request is gone)."""
        _count_result(status)
        self.server.engine.respond(decided.key, _instead(decided.response, status, reason))
        self._next(decided.aor)

    def _store_failed(self, pending: _Pending, exc: BaseException) -> None:
        # §10.3 step 7: the update failed, so the REGISTER fails with 500.
        log.error("binding store failed", aor=pending.aor, error=str(exc))
        self._reply(pending.key, pending.request, 500, "Binding Store Unavailable")
        self._next(pending.aor)

    def _crashed(self, pending: _Pending) -> None:
        log.exception("REGISTER failed", aor=pending.aor)
        self._reply(pending.key, pending.request, 500, "Server Internal Error")
        self._next(pending.aor)

    def _next(self, aor: str) -> None:
        """The AOR's REGISTER is done: start the next one queued for it (on a fresh stack)."""
        queue = self._queued.get(aor)
        if queue is None:
            return
        if queue:
            asyncio.get_running_loop().call_soon(self._start, queue.popleft())
            return
        del self._queued[aor]
        self._in_progress -= 1
        if self._in_progress == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

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
        if self._in_progress:
            self._idle = asyncio.get_running_loop().create_future()
            await self._idle
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


# Plain classes rather than frozen dataclasses: one of each is built per REGISTER, and
# compiled code builds a dataclass through its generated Python __init__.
class _Pending:
    """A REGISTER that passed the checks and waits for its AOR's turn."""

    __slots__ = ("aor", "key", "request", "source")

    def __init__(self, aor: str, request: Request, source: Endpoint, key: TransactionKey) -> None:
        self.aor: Final = aor
        self.request: Final = request
        self.source: Final = source
        self.key: Final = key


class _Decided:
    """A decided REGISTER, its answer ready (it may wait for its bindings to be stored)."""

    __slots__ = ("aor", "decision", "key", "response", "source")

    def __init__(
        self,
        aor: str,
        key: TransactionKey,
        source: Endpoint,
        decision: RegisterDecision,
        response: Response,
    ) -> None:
        self.aor: Final = aor
        self.key: Final = key
        self.source: Final = source
        self.decision: Final = decision
        self.response: Final = response


# The fields a response copies from its request (RFC 3261 §8.2.6.2).
_COPIED = frozenset({"via", "from", "to", "call-id", "cseq"})


def _instead(prepared: Response, status: int, reason: str) -> Response:
    """A response with `status` in place of `prepared`: its copied fields, none of its own."""
    fields = prepared.headers
    kept = tuple(item for key, item in zip(fields.keys(), fields, strict=True) if key in _COPIED)
    return Response(status, reason, Headers(kept), b"")
