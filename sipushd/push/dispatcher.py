"""Push dispatcher: bounded queue, per-provider concurrency, deadlines, retries, de-duplication.

``submit(request)`` never blocks and never raises: it returns a future that
resolves to a ``PushResult``. A push is retried after a ``TemporaryPushError``
with exponential backoff (first retry after ~0.1-0.2 s, or the provider's
Retry-After if longer) but never past its deadline: a ringing call cannot
wait. The same push (kind + Call-ID + token + sequence) submitted again
before its deadline is sent once; the duplicate gets the first one's result.
A deliberate repeat (a ringing alert sent again) carries the next
``sequence`` and is sent. ``full`` tells the server core to shed new calls.

Counters live in ``stats``; ``on_result`` sees every result (for metrics)
and ``on_dead_token`` every dead token (for the registrar to drop it).
"""

from __future__ import annotations

import asyncio
import heapq
import inspect
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

import structlog

from sipushd.core.payload import PushRequest
from sipushd.push.base import (
    PermanentPushError,
    PushError,
    PushOutcome,
    PushProvider,
    PushResult,
    TemporaryPushError,
    redact_token,
)
from sipushd.push.settings import DispatcherSettings

log = structlog.get_logger("sipushd.push")
# The stdlib logger behind `log`: a filtered debug call still costs a structlog bind.
_stdlib_log = logging.getLogger("sipushd.push")

DeadTokenHook = Callable[[PushRequest, PushResult], Awaitable[None] | None]
ResultHook = Callable[[PushRequest, PushResult], None]
_DedupKey = tuple[str, str, str, str, int]


@dataclass
class DispatcherStats:
    """Plain counters for metrics (read them; the dispatcher updates them)."""

    submitted: int = 0
    delivered: int = 0
    dead_tokens: int = 0
    failed: int = 0
    deduplicated: int = 0
    retries: int = 0
    in_flight: int = 0
    failed_by_reason: Counter[str] = field(default_factory=Counter)
    latency_count: int = 0
    latency_sum: float = 0.0


class _OutOfTime(Exception):
    """The deadline passed while the push waited for a concurrency slot."""


class Dispatcher:
    """Sends PushRequests through the provider named by ``request.provider``."""

    def __init__(
        self,
        providers: Mapping[str, PushProvider],
        settings: DispatcherSettings | None = None,
        *,
        on_dead_token: DeadTokenHook | None = None,
        on_result: ResultHook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or DispatcherSettings()
        self.stats = DispatcherStats()
        self._providers = dict(providers)
        self._limits = {name: asyncio.Semaphore(self.settings.concurrency) for name in providers}
        self._on_dead_token = on_dead_token
        self._on_result = on_result
        self._clock = clock
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._hooks: set[asyncio.Future[None]] = set()
        # Pushes sent lately, kept until their deadline: (future, deadline) by key, and a
        # heap of (deadline, key) that submit() prunes (a timer per push cost more).
        self._recent: dict[_DedupKey, tuple[asyncio.Future[PushResult], float]] = {}
        self._expiries: list[tuple[float, _DedupKey]] = []

    async def start(self) -> None:
        """Start every provider; pushes are accepted from now on."""
        for provider in self._unique_providers():
            await provider.start()
        self._running = True

    async def stop(self, grace: float = 5.0) -> None:
        """Refuse new pushes, let running ones finish for ``grace`` seconds, close providers."""
        self._running = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._hooks:
            await asyncio.wait(set(self._hooks), timeout=grace)
        self._recent.clear()
        self._expiries.clear()
        for provider in self._unique_providers():
            await provider.stop()

    def submit(self, request: PushRequest) -> asyncio.Future[PushResult]:
        """Queue one push; the future resolves to its result (await it under asyncio.shield)."""
        loop = asyncio.get_running_loop()
        key = self._dedup_key(request)
        if key is not None:
            recent = self._recent_future(key)
            if recent is not None:
                self.stats.deduplicated += 1
                return recent
        self.stats.submitted += 1
        future: asyncio.Future[PushResult] = loop.create_future()
        provider = self._providers.get(request.provider)
        refusal = self._refusal(provider)
        if refusal or provider is None:
            self._finish(request, self._failed(request, refusal or "no_provider"), future)
            return future
        self.stats.in_flight += 1
        task = loop.create_task(self._run(request, provider, future, loop.time()))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if key is not None:
            self._remember(key, future, request.deadline)
        return future

    @property
    def full(self) -> bool:
        """True while the queue holds ``max_queue`` pushes (new ones would be refused)."""
        return self.stats.in_flight >= self.settings.max_queue

    async def push(self, request: PushRequest) -> PushResult:
        """Submit and wait for the result."""
        return await asyncio.shield(self.submit(request))

    def _refusal(self, provider: PushProvider | None) -> str:
        if not self._running:
            return "stopped"
        if provider is None:
            return "no_provider"
        if self.full:
            return "queue_full"
        return ""

    def _dedup_key(self, request: PushRequest) -> _DedupKey | None:
        if not self.settings.deduplicate or not request.call_id:
            return None
        return (
            request.kind.value,
            request.call_id,
            request.provider,
            request.token,
            request.sequence,
        )

    def _recent_future(self, key: _DedupKey) -> asyncio.Future[PushResult] | None:
        """The future of the same push sent before its deadline, if any; forgets expired ones."""
        expiries = self._expiries
        if not expiries:
            return None
        now = self._clock()
        while expiries and expiries[0][0] <= now:
            _, old = heapq.heappop(expiries)
            entry = self._recent.get(old)
            if entry is not None and entry[1] <= now:
                del self._recent[old]
        entry = self._recent.get(key)
        return entry[0] if entry is not None else None

    def _remember(
        self, key: _DedupKey, future: asyncio.Future[PushResult], deadline: float
    ) -> None:
        self._recent[key] = (future, deadline)
        heapq.heappush(self._expiries, (deadline, key))

    async def _run(
        self,
        request: PushRequest,
        provider: PushProvider,
        future: asyncio.Future[PushResult],
        started: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        result = self._failed(request, "internal_error")
        attempts = 0
        try:
            result, attempts = await self._attempts(request, provider)
        except asyncio.CancelledError:
            result = self._failed(request, "shutdown")
            raise
        finally:
            self.stats.in_flight -= 1
            latency = loop.time() - started
            self._finish(request, replace(result, attempts=attempts, latency=latency), future)

    async def _attempts(
        self, request: PushRequest, provider: PushProvider
    ) -> tuple[PushResult, int]:
        """Try until delivered, dead, permanently refused, or out of time; (result, attempts)."""
        last: TemporaryPushError | None = None
        attempt = 0
        while True:
            if request.deadline <= self._clock():
                return self._failed(request, "deadline", attempt, last), attempt
            attempt += 1
            try:
                return await self._attempt(request, provider), attempt
            except _OutOfTime:
                return self._failed(request, "deadline", attempt - 1, last), attempt - 1
            except TimeoutError:
                last = TemporaryPushError("timeout")
            except TemporaryPushError as exc:
                last = exc
            except PermanentPushError as exc:
                return self._failed(request, exc.reason, attempt, exc), attempt
            except Exception as exc:  # a provider bug must not kill the dispatcher
                log.exception("push provider error", provider=request.provider)
                error = PushError(repr(exc))
                return self._failed(request, "internal_error", attempt, error), attempt
            delay = self._backoff(attempt, last.retry_after)
            if self._clock() + delay >= request.deadline:
                return self._failed(request, "deadline", attempt, last), attempt
            self.stats.retries += 1
            await asyncio.sleep(delay)

    async def _attempt(self, request: PushRequest, provider: PushProvider) -> PushResult:
        """One send; waiting for a concurrency slot counts against the deadline only."""
        limit = self._limits[request.provider]
        if limit.locked():
            try:
                async with asyncio.timeout(request.deadline - self._clock()):
                    await limit.acquire()
            except TimeoutError:
                raise _OutOfTime from None
        else:
            await limit.acquire()  # a free slot is taken at once: no timer needed
        try:
            remaining = request.deadline - self._clock()
            async with asyncio.timeout(min(remaining, self.settings.attempt_timeout)):
                return await provider.send(request)
        finally:
            limit.release()

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        s = self.settings
        delay = min(s.backoff_max, s.backoff_initial * s.backoff_factor ** (attempt - 1))
        delay *= 0.5 + random.random() / 2  # jitter: spread retries of a burst
        return max(delay, retry_after or 0.0)

    def _failed(
        self, request: PushRequest, reason: str, attempts: int = 0, error: PushError | None = None
    ) -> PushResult:
        detail = ""
        if error is not None:
            detail = f"{error.reason}: {error.detail}" if error.detail else error.reason
        return PushResult(
            PushOutcome.FAILED,
            request.provider,
            error.status if error is not None else None,
            reason,
            attempts=attempts,
            detail=detail,
        )

    def _finish(
        self, request: PushRequest, result: PushResult, future: asyncio.Future[PushResult]
    ) -> None:
        if not future.done():
            future.set_result(result)
        self._count(result)
        self._log(request, result)
        if self._on_result is not None:
            try:
                self._on_result(request, result)
            except Exception:  # a metrics bug must not lose the push's result
                log.exception("push result hook failed")
        if result.outcome is PushOutcome.DEAD_TOKEN and self._on_dead_token is not None:
            self._call_dead_token_hook(request, result)

    def _count(self, result: PushResult) -> None:
        stats = self.stats
        if result.outcome is PushOutcome.DELIVERED:
            stats.delivered += 1
        elif result.outcome is PushOutcome.DEAD_TOKEN:
            stats.dead_tokens += 1
        else:
            stats.failed += 1
            stats.failed_by_reason[result.reason] += 1
        if result.attempts:
            stats.latency_count += 1
            stats.latency_sum += result.latency

    def _call_dead_token_hook(self, request: PushRequest, result: PushResult) -> None:
        assert self._on_dead_token is not None
        try:
            outcome = self._on_dead_token(request, result)
        except Exception:
            log.exception("dead-token hook failed", token=redact_token(request.token))
            return
        if inspect.isawaitable(outcome):
            task = asyncio.ensure_future(outcome)
            self._hooks.add(task)
            task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Future[None]) -> None:
        self._hooks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("dead-token hook failed", error=repr(task.exception()))

    def _log(self, request: PushRequest, result: PushResult) -> None:
        delivered = result.outcome is PushOutcome.DELIVERED
        if delivered and not _stdlib_log.isEnabledFor(logging.DEBUG):
            return
        fields = {
            "provider": request.provider,
            "kind": request.kind.value,
            "app": request.app_id,
            "token": redact_token(request.token),
            "call_id": request.call_id,
            "status": result.status,
            "reason": result.reason,
            "attempts": result.attempts,
            "latency_ms": round(result.latency * 1000, 1),
        }
        if delivered:
            log.debug("push delivered", push_id=result.push_id, **fields)
        elif result.outcome is PushOutcome.DEAD_TOKEN:
            log.info("push token dead", **fields)
        else:
            log.warning("push failed", detail=result.detail, **fields)

    def _unique_providers(self) -> list[PushProvider]:
        unique: dict[int, PushProvider] = {}
        for provider in self._providers.values():
            unique.setdefault(id(provider), provider)
        return list(unique.values())
