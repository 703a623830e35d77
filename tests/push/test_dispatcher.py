"""Dispatcher behaviour with in-process fake providers: retries, deadlines, queue, dedup."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio

from sipushd.core.payload import PushKind, PushRequest
from sipushd.push.base import (
    PermanentPushError,
    PushOutcome,
    PushProvider,
    PushResult,
    TemporaryPushError,
)
from sipushd.push.dispatcher import Dispatcher
from sipushd.push.settings import DispatcherSettings


class FakeProvider(PushProvider):
    """Answers from a script: a list of results / exceptions, the last one repeating."""

    name = "fake"

    def __init__(self, *script: PushResult | Exception) -> None:
        self.script = list(script) or [PushResult(PushOutcome.DELIVERED, "fake", 200)]
        self.calls: list[tuple[PushRequest, float]] = []
        self.gate: asyncio.Event | None = None
        self.delay = 0.0
        self.active = 0
        self.max_active = 0
        self.started = self.stopped = False

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def send(self, request: PushRequest) -> PushResult:
        self.calls.append((request, time.time()))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
            step = self.script[min(len(self.calls), len(self.script)) - 1]
            if isinstance(step, Exception):
                raise step
            return step
        finally:
            self.active -= 1


def push(token: str = "t1", call_id: str = "c1", ttl: float = 30.0, **kw: object) -> PushRequest:
    values: dict[str, object] = {
        "kind": PushKind.CALL,
        "provider": "apns",
        "token": token,
        "app_id": "org.example.app",
        "deadline": time.time() + ttl,
        "call_id": call_id,
    }
    values.update(kw)
    return PushRequest(**values)  # type: ignore[arg-type]


FAST = DispatcherSettings(backoff_initial=0.01, backoff_max=0.05)


@pytest_asyncio.fixture
async def make() -> AsyncIterator[Callable[..., Dispatcher]]:
    made: list[Dispatcher] = []

    def factory(
        provider: PushProvider, settings: DispatcherSettings = FAST, **kw: object
    ) -> Dispatcher:
        dispatcher = Dispatcher({"apns": provider}, settings, **kw)  # type: ignore[arg-type]
        made.append(dispatcher)
        return dispatcher

    yield factory
    for dispatcher in made:
        await dispatcher.stop(grace=0.1)


@pytest.mark.asyncio
async def test_delivered(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    seen: list[PushResult] = []
    dispatcher = make(provider, on_result=lambda req, res: seen.append(res))
    await dispatcher.start()
    assert provider.started
    result = await dispatcher.push(push())
    assert result.outcome is PushOutcome.DELIVERED
    assert result.attempts == 1 and result.latency >= 0
    assert dispatcher.stats.delivered == 1 and dispatcher.stats.submitted == 1
    assert dispatcher.stats.latency_count == 1
    assert seen == [result]
    await dispatcher.stop()
    assert provider.stopped


@pytest.mark.asyncio
async def test_temporary_errors_are_retried(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider(
        TemporaryPushError("InternalServerError", 500),
        TemporaryPushError("TooManyRequests", 429, retry_after=0.05),
        PushResult(PushOutcome.DELIVERED, "fake", 200),
    )
    dispatcher = make(provider)
    await dispatcher.start()
    result = await dispatcher.push(push())
    assert result.outcome is PushOutcome.DELIVERED
    assert result.attempts == 3
    assert dispatcher.stats.retries == 2
    # Retry-After is honoured: the third attempt waited at least 50 ms after the second.
    assert provider.calls[2][1] - provider.calls[1][1] >= 0.05


@pytest.mark.asyncio
async def test_first_retry_follows_the_initial_backoff(
    make: Callable[..., Dispatcher], monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = FakeProvider(
        TemporaryPushError("x", 503), PushResult(PushOutcome.DELIVERED, "", 200)
    )
    dispatcher = make(provider, DispatcherSettings())
    await dispatcher.start()
    delays: list[float] = []
    real_sleep = asyncio.sleep

    async def spy(delay: float) -> None:
        delays.append(delay)
        await real_sleep(0)

    monkeypatch.setattr("sipushd.push.dispatcher.asyncio.sleep", spy)
    result = await dispatcher.push(push())
    monkeypatch.undo()
    assert result.delivered
    assert len(delays) == 1 and 0.1 <= delays[0] <= 0.2  # first retry well within 250 ms


@pytest.mark.asyncio
async def test_permanent_error_is_not_retried(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider(PermanentPushError("TopicDisallowed", 400, "topic"))
    dispatcher = make(provider)
    await dispatcher.start()
    result = await dispatcher.push(push())
    assert result.outcome is PushOutcome.FAILED
    assert (result.status, result.reason, result.attempts) == (400, "TopicDisallowed", 1)
    assert "topic" in result.detail
    assert len(provider.calls) == 1
    assert dispatcher.stats.failed_by_reason["TopicDisallowed"] == 1


@pytest.mark.asyncio
async def test_dead_token_calls_the_hook(make: Callable[..., Dispatcher]) -> None:
    dead = PushResult(PushOutcome.DEAD_TOKEN, "fake", 410, "Unregistered")
    sync_seen: list[str] = []
    async_seen: list[str] = []

    async def async_hook(request: PushRequest, result: PushResult) -> None:
        await asyncio.sleep(0)
        async_seen.append(request.token)

    one = make(FakeProvider(dead), on_dead_token=lambda req, res: sync_seen.append(req.token))
    two = make(FakeProvider(dead), on_dead_token=async_hook)
    for dispatcher in (one, two):
        await dispatcher.start()
        result = await dispatcher.push(push(token="dead"))
        assert result.outcome is PushOutcome.DEAD_TOKEN and result.reason == "Unregistered"
        assert dispatcher.stats.dead_tokens == 1
    await two.stop()
    assert sync_seen == ["dead"] and async_seen == ["dead"]


@pytest.mark.asyncio
async def test_retries_stop_at_the_deadline(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider(TemporaryPushError("InternalServerError", 500))
    dispatcher = make(provider)
    await dispatcher.start()
    request = push(ttl=0.3)
    result = await dispatcher.push(request)
    assert result.outcome is PushOutcome.FAILED
    assert result.reason == "deadline" and result.status == 500
    assert result.attempts == len(provider.calls) >= 2
    assert all(at < request.deadline for _, at in provider.calls)


@pytest.mark.asyncio
async def test_retry_after_past_the_deadline_gives_up_at_once(
    make: Callable[..., Dispatcher],
) -> None:
    provider = FakeProvider(TemporaryPushError("TooManyRequests", 429, retry_after=60))
    dispatcher = make(provider)
    await dispatcher.start()
    result = await dispatcher.push(push(ttl=5))
    assert (result.reason, result.attempts, len(provider.calls)) == ("deadline", 1, 1)


@pytest.mark.asyncio
async def test_a_hanging_attempt_is_cut_by_the_deadline(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    provider.gate = asyncio.Event()  # never set: the provider hangs
    dispatcher = make(provider, DispatcherSettings(attempt_timeout=0.05, backoff_initial=0.01))
    await dispatcher.start()
    result = await dispatcher.push(push(ttl=0.3))
    assert result.reason == "deadline"
    assert "timeout" in result.detail
    assert result.attempts >= 2  # the per-attempt timeout let it try again


@pytest.mark.asyncio
async def test_expired_push_is_not_sent(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    dispatcher = make(provider)
    await dispatcher.start()
    result = await dispatcher.push(push(ttl=-1))
    assert (result.reason, result.attempts) == ("deadline", 0)
    assert provider.calls == []


@pytest.mark.asyncio
async def test_queue_full_is_a_counted_failure(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    provider.gate = asyncio.Event()
    dispatcher = make(provider, DispatcherSettings(max_queue=2))
    await dispatcher.start()
    first = dispatcher.submit(push(token="a"))
    second = dispatcher.submit(push(token="b"))
    third = dispatcher.submit(push(token="c"))
    assert third.done()
    assert third.result().outcome is PushOutcome.FAILED
    assert third.result().reason == "queue_full"
    assert dispatcher.stats.failed_by_reason["queue_full"] == 1
    provider.gate.set()
    assert (await first).delivered and (await second).delivered
    assert (await dispatcher.push(push(token="d"))).delivered  # room again


@pytest.mark.asyncio
async def test_concurrency_is_limited_per_provider(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    provider.gate = asyncio.Event()
    dispatcher = make(provider, DispatcherSettings(concurrency=2))
    await dispatcher.start()
    futures = [dispatcher.submit(push(token=f"t{i}")) for i in range(6)]
    for _ in range(5):
        await asyncio.sleep(0)
    assert provider.active == 2
    provider.gate.set()
    results = await asyncio.gather(*futures)
    assert all(r.delivered for r in results)
    assert provider.max_active == 2


@pytest.mark.asyncio
async def test_duplicates_share_one_push(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider(PushResult(PushOutcome.DEAD_TOKEN, "fake", 410, "Unregistered"))
    hooks: list[str] = []
    dispatcher = make(provider, on_dead_token=lambda req, res: hooks.append(req.token))
    await dispatcher.start()
    first = dispatcher.submit(push())
    second = dispatcher.submit(push())
    assert second is first
    result = await first
    late = await dispatcher.push(push())  # same call, still within the deadline
    assert late == result
    assert len(provider.calls) == 1 and hooks == ["t1"]
    assert dispatcher.stats.deduplicated == 2
    # Another kind, token or call is another push.
    await dispatcher.push(push(kind=PushKind.MISSED_CALL))
    await dispatcher.push(push(token="t2"))
    await dispatcher.push(push(call_id="c2"))
    assert len(provider.calls) == 4


@pytest.mark.asyncio
async def test_a_push_is_deduplicated_until_its_deadline_then_forgotten(
    make: Callable[..., Dispatcher],
) -> None:
    now = [time.time()]
    provider = FakeProvider()
    dispatcher = make(provider, clock=lambda: now[0])
    await dispatcher.start()
    first = push(ttl=30.0)
    await dispatcher.push(first)
    now[0] = first.deadline - 0.001  # still within the first one's deadline
    await dispatcher.push(push(deadline=now[0] + 60))
    assert len(provider.calls) == 1 and dispatcher.stats.deduplicated == 1
    now[0] = first.deadline  # from its deadline on, the same push is a new one
    again = push(deadline=now[0] + 60)
    assert (await dispatcher.push(again)).delivered
    assert len(provider.calls) == 2
    # The expired entry was dropped; the new one is remembered until its own deadline.
    assert dispatcher.submit(again).done() and dispatcher.stats.deduplicated == 2
    assert len(dispatcher._recent) == 1 and len(dispatcher._expiries) == 1


@pytest.mark.asyncio
async def test_a_repeat_with_the_next_sequence_is_sent_and_deduplicated_itself(
    make: Callable[..., Dispatcher],
) -> None:
    provider = FakeProvider()
    dispatcher = make(provider)
    await dispatcher.start()
    await dispatcher.push(push())
    await dispatcher.push(push(sequence=1))
    await dispatcher.push(push(sequence=1))  # the same repeat twice: sent once
    assert [request.sequence for request, _ in provider.calls] == [0, 1]
    assert dispatcher.stats.deduplicated == 1


@pytest.mark.asyncio
async def test_full_while_the_queue_is_at_max_queue(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    provider.gate = asyncio.Event()
    dispatcher = make(provider, DispatcherSettings(max_queue=1))
    await dispatcher.start()
    assert not dispatcher.full
    pending = dispatcher.submit(push())
    assert dispatcher.full
    provider.gate.set()
    await pending
    assert not dispatcher.full


@pytest.mark.asyncio
async def test_duplicate_after_the_deadline_is_sent_again(make: Callable[..., Dispatcher]) -> None:
    provider = FakeProvider()
    dispatcher = make(provider)
    await dispatcher.start()
    await dispatcher.push(push(ttl=0.05))
    await asyncio.sleep(0.1)
    await dispatcher.push(push())
    assert len(provider.calls) == 2


@pytest.mark.asyncio
async def test_stop_answers_pending_pushes_and_refuses_new_ones(
    make: Callable[..., Dispatcher],
) -> None:
    provider = FakeProvider()
    provider.gate = asyncio.Event()
    dispatcher = make(provider)
    await dispatcher.start()
    pending = dispatcher.submit(push())
    await asyncio.sleep(0)
    await dispatcher.stop(grace=0.05)
    assert pending.result().reason == "shutdown"
    refused = dispatcher.submit(push(token="later"))
    assert refused.result().reason == "stopped"


@pytest.mark.asyncio
async def test_unknown_provider_and_provider_bugs(make: Callable[..., Dispatcher]) -> None:
    dispatcher = make(FakeProvider(RuntimeError("boom")))
    await dispatcher.start()
    assert (await dispatcher.push(push(provider="webpush"))).reason == "no_provider"
    result = await dispatcher.push(push())
    assert result.reason == "internal_error" and "boom" in result.detail


@pytest.mark.asyncio
async def test_waiting_for_a_slot_is_bounded_by_the_deadline_only(
    make: Callable[..., Dispatcher],
) -> None:
    provider = FakeProvider()
    provider.delay = 0.1
    dispatcher = make(provider, DispatcherSettings(concurrency=1, attempt_timeout=0.15))
    await dispatcher.start()
    first = dispatcher.submit(push(token="first"))
    second = dispatcher.submit(push(token="second"))  # waits 0.1 s for the slot, sends 0.1 s
    starved = dispatcher.submit(push(token="third", ttl=0.15))
    assert (await first).attempts == 1
    assert (await second).delivered
    assert (await second).attempts == 1  # the wait for the slot was not a timed-out attempt
    assert ((await starved).reason, (await starved).attempts) == ("deadline", 0)
    assert [req.token for req, _ in provider.calls] == ["first", "second"]


@pytest.mark.asyncio
async def test_a_failing_result_hook_does_not_lose_the_result(
    make: Callable[..., Dispatcher],
) -> None:
    def broken(request: PushRequest, result: PushResult) -> None:
        raise ValueError("metrics bug")

    dispatcher = make(FakeProvider(), on_result=broken)
    await dispatcher.start()
    async with asyncio.timeout(5):  # without the guard the future is never resolved
        assert (await dispatcher.push(push())).delivered
