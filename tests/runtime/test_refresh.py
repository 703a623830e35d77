"""Binding-refresh pushes (RFC 8599 §5.5) against the in-memory binding store, clock stepped."""

from __future__ import annotations

import asyncio

import pytest

from sipushd.core.binding import Binding
from sipushd.core.payload import PushKind, PushRequest, PushService
from sipushd.core.proxy import refresh_due
from sipushd.core.pushparams import PushTarget
from sipushd.push.base import PushOutcome, PushResult
from sipushd.runtime.refresh import RefreshPusher
from sipushd.sip import Endpoint
from sipushd.store.base import StoreError
from sipushd.store.memory import MemoryBindingStore

APNS = PushTarget("apns", False, "org.example.app", "TEAM1", (("voip", "aa"), ("remote", "bb")))
VOIP_ONLY = PushTarget("apns", False, "org.example.app", "TEAM1", (("voip", "aa"),))


def binding(key: str, expires_at: float, **changes: object) -> Binding:
    values: dict[str, object] = {
        "aor": "sip:bob@example.org",
        "key": key,
        "contact": f"sip:bob@192.0.2.1:5060;k={key}",
        "expires_at": expires_at,
        "call_id": "c",
        "cseq": 1,
        "flow": Endpoint("udp", "192.0.2.1", 5060),
        "registered_at": 0.0,
        "updated_at": 0.0,
        "push": APNS,
    }
    values.update(changes)
    return Binding(**values)  # type: ignore[arg-type]


class Recorder:
    def __init__(self) -> None:
        self.pushes: list[PushRequest] = []

    def submit(self, request: PushRequest) -> asyncio.Future[PushResult]:
        self.pushes.append(request)
        future: asyncio.Future[PushResult] = asyncio.get_running_loop().create_future()
        future.set_result(PushResult(PushOutcome.DELIVERED, request.provider, 200))
        return future


def test_refresh_is_due_near_expiry_only_for_push_bindings_without_pnsreg() -> None:
    assert not refresh_due(binding("a", 3600.0), now=3000.0)
    assert refresh_due(binding("a", 3600.0), now=3500.0)
    assert not refresh_due(binding("a", 3600.0, pnsreg=True), now=3500.0)
    assert not refresh_due(binding("a", 3600.0, push=None), now=3500.0)
    assert not refresh_due(binding("a", 3600.0), now=3600.0), "never once expired"
    # A short registration is pushed in the second half of its life.
    assert not refresh_due(binding("a", 100.0), now=40.0)
    assert refresh_due(binding("a", 100.0), now=60.0)


@pytest.mark.asyncio
async def test_each_binding_version_gets_one_background_push() -> None:
    store = MemoryBindingStore()
    now = [3000.0]
    await store.apply(
        "sip:bob@example.org",
        [binding("a", 3600.0), binding("b", 3600.0, push=VOIP_ONLY), binding("c", 9000.0)],
        [],
    )
    recorder = Recorder()
    refresher = RefreshPusher(store, recorder, clock=lambda: now[0])
    assert await refresher.tick() == 0
    now[0] = 3480.0
    assert await refresher.tick() == 1
    assert await refresher.tick() == 0, "pushed once per binding version"
    (push,) = recorder.pushes
    assert push.kind is PushKind.REFRESH and push.service is PushService.REMOTE
    assert push.token == "bb" and push.deadline == 3600.0
    # The phone re-registered: the new version is pushed again near its own expiry.
    await store.apply("sip:bob@example.org", [binding("a", 7200.0, updated_at=3490.0)], [])
    now[0] = 7100.0
    assert await refresher.tick() == 1
    await store.close()


class SharedStore(MemoryBindingStore):
    """A store shared with other nodes: they won the claims in `taken`; Redis may fail."""

    def __init__(self) -> None:
        super().__init__()
        self.taken: set[str] = set()
        self.broken = False
        self.asked: list[str] = []

    async def claim_refresh(self, binding: Binding, now: float) -> bool:
        self.asked.append(binding.key)
        if self.broken:
            raise StoreError("claim failed")
        return binding.key not in self.taken


@pytest.mark.asyncio
async def test_a_refresh_claimed_by_another_node_is_not_pushed_here() -> None:
    store = SharedStore()
    store.taken = {"b"}
    other = PushTarget("apns", False, "org.example.app", "TEAM1", (("remote", "cc"),))
    await store.apply(
        "sip:bob@example.org", [binding("a", 3600.0), binding("b", 3600.0, push=other)], []
    )
    recorder = Recorder()
    refresher = RefreshPusher(store, recorder, clock=lambda: 3500.0)
    assert await refresher.tick() == 1
    assert [p.token for p in recorder.pushes] == ["bb"]
    assert await refresher.tick() == 0
    assert sorted(store.asked) == ["a", "b"], "each version is claimed once"
    await store.close()


@pytest.mark.asyncio
async def test_a_failed_claim_is_asked_again_on_the_next_scan() -> None:
    store = SharedStore()
    store.broken = True
    await store.apply("sip:bob@example.org", [binding("a", 3600.0)], [])
    recorder = Recorder()
    refresher = RefreshPusher(store, recorder, clock=lambda: 3500.0)
    with pytest.raises(StoreError):
        await refresher.tick()
    assert recorder.pushes == []
    store.broken = False
    assert await refresher.tick() == 1
    await store.close()
