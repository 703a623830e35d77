"""The `BindingStore` contract, run against every backend.

To add a backend, write an opener `async def _open_x(place: Path) -> BindingStore`
and add one line to `BACKENDS` (with `marks=(pytest.mark.redis,)` when it needs
a server). `place` is a per-test directory; opening it a
second time must see what the first store wrote if the backend is persistent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from sipushd.core.binding import Binding, binding_from_json, binding_to_json
from sipushd.core.pushparams import PushTarget
from sipushd.sip import Endpoint
from sipushd.store.base import BindingStore, StoreError
from sipushd.store.memory import MemoryBindingStore
from sipushd.store.redis_bindings import RedisBindingStore
from sipushd.store.sqlite import SqliteBindingStore
from tests.store.backends import Backend, backend_params, redis_prefix
from tests.store.redis_server import shared_url


async def _open_memory(place: Path) -> BindingStore:
    return MemoryBindingStore()


async def _open_sqlite(place: Path) -> BindingStore:
    return await SqliteBindingStore.open(place / "sipushd.db")


async def _open_redis(place: Path) -> BindingStore:
    return await RedisBindingStore.open(shared_url(), redis_prefix(place))


BACKENDS: dict[str, Backend[BindingStore]] = {
    "memory": Backend(_open_memory, persistent=False),
    "sqlite": Backend(_open_sqlite, persistent=True),
    "redis": Backend(_open_redis, persistent=True, marks=(pytest.mark.redis,)),
}

AOR = "sip:alice@example.org"
NOW = 10_000.0
UUID1 = "<urn:uuid:00000000-0000-0000-0000-000000000001>"
APNS = PushTarget(
    "apns", True, "org.example.app", "ABCD1234", (("voip", "tok-voip"), ("remote", "tok-remote"))
)
FCM = PushTarget("fcm", False, "my-project", None, (("remote", "tok-fcm"),))


def binding(key: str, aor: str = AOR, **changes: Any) -> Binding:
    """A binding registered at NOW for an hour, overridable field by field."""
    fields: dict[str, Any] = {
        "aor": aor,
        "key": key,
        "contact": f"sip:{key}@192.0.2.10;transport=tcp",
        "expires_at": NOW + 3600,
        "call_id": f"call-{key}",
        "cseq": 1,
        "flow": Endpoint("tcp", "192.0.2.10", 40000, None),
        "registered_at": NOW,
        "updated_at": NOW,
    }
    fields.update(changes)
    return Binding(**fields)


@pytest.fixture(params=backend_params(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Backend[BindingStore]:
    return BACKENDS[request.param]


@pytest.fixture(params=backend_params(BACKENDS, persistent_only=True))
def persistent(request: pytest.FixtureRequest) -> Backend[BindingStore]:
    return BACKENDS[request.param]


@pytest_asyncio.fixture
async def store(backend: Backend[BindingStore], tmp_path: Path) -> AsyncIterator[BindingStore]:
    opened = await backend.open(tmp_path)
    yield opened
    await opened.close()


@pytest.mark.asyncio
async def test_unknown_aor_has_no_bindings(store: BindingStore) -> None:
    assert await store.get(AOR, NOW) == []
    assert await store.count(NOW) == 0
    assert await store.all_aors(NOW) == []


@pytest.mark.asyncio
async def test_apply_then_get_oldest_first(store: BindingStore) -> None:
    late = binding("b", registered_at=NOW + 5)
    early = binding("a", registered_at=NOW - 5, push=APNS, path=("<sip:edge;lr>",))
    await store.apply(AOR, [late, early], [])
    assert await store.get(AOR, NOW) == [early, late]
    assert await store.get("sip:bob@example.org", NOW) == []


@pytest.mark.asyncio
async def test_upsert_replaces_the_binding_with_the_same_key(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a", cseq=1)], [])
    await store.apply(AOR, [binding("a", cseq=2, push=FCM)], [])
    (found,) = await store.get(AOR, NOW)
    assert (found.cseq, found.push) == (2, FCM)


@pytest.mark.asyncio
async def test_removals_and_upserts_in_one_call(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a"), binding("b")], [])
    await store.apply(AOR, [binding("c")], ["a", "missing"])
    assert [b.key for b in await store.get(AOR, NOW)] == ["b", "c"]


@pytest.mark.asyncio
async def test_apply_is_all_or_nothing(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a")], [])
    with pytest.raises(StoreError):
        await store.apply(AOR, [binding("b"), binding("x", aor="sip:bob@example.org")], ["a"])
    assert [b.key for b in await store.get(AOR, NOW)] == ["a"]


@pytest.mark.asyncio
async def test_expired_bindings_are_invisible_then_purged(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a", expires_at=NOW + 10), binding("b")], [])
    await store.apply(
        "sip:bob@example.org", [binding("c", "sip:bob@example.org", expires_at=NOW + 10)], []
    )
    later = NOW + 10
    assert [b.key for b in await store.get(AOR, later)] == ["b"]
    assert await store.count(later) == 1
    assert await store.all_aors(later) == [AOR]
    assert await store.all_aors(NOW) == [AOR, "sip:bob@example.org"]
    assert await store.purge_expired(later) == 2
    assert await store.purge_expired(later) == 0
    assert await store.count(NOW) == 1


@pytest.mark.asyncio
async def test_by_instance_and_by_gruu(store: BindingStore) -> None:
    await store.apply(AOR, [binding(UUID1, instance=UUID1), binding("plain")], [])
    found = await store.by_instance(AOR, UUID1, NOW)
    assert found is not None and found.key == UUID1
    assert await store.by_instance(AOR, "<urn:uuid:nope>", NOW) is None
    assert await store.by_instance(AOR, UUID1, NOW + 3600) is None
    gruu = f"{AOR};gr=urn:uuid:00000000-0000-0000-0000-000000000001"
    assert await store.by_gruu(gruu, NOW) == found
    assert await store.by_gruu(AOR, NOW) is None
    assert await store.by_gruu("not a uri", NOW) is None


@pytest.mark.asyncio
async def test_with_token_finds_every_holder(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a", push=APNS), binding("b", push=FCM), binding("c")], [])
    bob = "sip:bob@example.org"
    await store.apply(bob, [binding("d", bob, push=APNS)], [])
    found = await store.with_token("tok-remote", NOW)
    assert [(b.aor, b.key) for b in found] == [(AOR, "a"), (bob, "d")]
    assert await store.with_token("unknown", NOW) == []


@pytest.mark.asyncio
async def test_remove_token_drops_only_that_token(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a", push=APNS), binding("b", push=FCM)], [])
    updated = await store.remove_token("tok-voip")
    assert [b.key for b in updated] == ["a"]
    assert updated[0].push is not None
    assert updated[0].push.tokens == (("remote", "tok-remote"),)
    assert await store.with_token("tok-voip", NOW) == []
    (a, b) = await store.get(AOR, NOW)
    assert a == updated[0] and b.push == FCM
    updated = await store.remove_token("tok-fcm")
    assert updated[0].push is None
    assert (await store.get(AOR, NOW))[1].push is None
    assert await store.remove_token("tok-fcm") == []


@pytest.mark.asyncio
async def test_token_index_follows_upserts_and_removals(store: BindingStore) -> None:
    await store.apply(AOR, [binding("a", push=FCM)], [])
    await store.apply(AOR, [binding("a", push=APNS)], [])
    assert await store.with_token("tok-fcm", NOW) == []
    await store.apply(AOR, [], ["a"])
    assert await store.with_token("tok-voip", NOW) == []


@pytest.mark.asyncio
async def test_token_index_keeps_the_other_holders_of_a_shared_token(store: BindingStore) -> None:
    users = [f"sip:u{n}@example.org" for n in range(3)]
    for aor in users:
        await store.apply(aor, [binding("a", aor, push=APNS)], [])
    await store.apply(users[1], [binding("a", users[1], push=APNS)], [])  # a refresh
    holders = await store.with_token("tok-voip", NOW)
    assert [b.aor for b in holders] == users
    await store.apply(users[1], [], ["a"])
    assert [b.aor for b in await store.with_token("tok-voip", NOW)] == [users[0], users[2]]
    await store.apply(users[0], [binding("a", users[0], push=FCM)], [])  # token changed
    assert [b.aor for b in await store.with_token("tok-remote", NOW)] == [users[2]]
    assert [b.aor for b in await store.with_token("tok-fcm", NOW)] == [users[0]]


@pytest.mark.asyncio
async def test_expiring_lists_bindings_due_for_a_refresh_push(store: BindingStore) -> None:
    await store.apply(
        AOR,
        [
            binding("a", expires_at=NOW + 100),
            binding("b", expires_at=NOW + 50),
            binding("c", expires_at=NOW + 500),
            binding("d", expires_at=NOW - 1),
        ],
        [],
    )
    assert [b.key for b in await store.expiring(NOW, NOW + 120)] == ["b", "a"]


@pytest.mark.asyncio
async def test_a_lone_node_is_granted_each_refresh_claim(store: BindingStore) -> None:
    # RFC 8599 §5.5: the claim picks one sender among nodes sharing the store; a node
    # alone always sends (tests/store/test_redis_store.py has two nodes on one server).
    await store.apply(AOR, [binding("a", push=APNS)], [])
    (found,) = await store.get(AOR, NOW)
    assert await store.claim_refresh(found, NOW)


@pytest.mark.asyncio
async def test_concurrent_applies_take_effect_in_call_order(
    backend: Backend[BindingStore], tmp_path: Path
) -> None:
    store = await backend.open(tmp_path)
    await asyncio.gather(
        *(store.apply(AOR, [binding("a", cseq=n)], []) for n in range(1, 30)),
        store.apply(AOR, [binding("b")], []),
        store.apply(AOR, [], ["b"]),
        store.apply(AOR, [], ["c"]),
        store.apply(AOR, [binding("c", cseq=5)], []),
    )
    expected = [binding("a", cseq=29), binding("c", cseq=5)]
    assert await store.get(AOR, NOW) == expected
    await store.close()
    if backend.persistent:
        reopened = await backend.open(tmp_path)
        assert await reopened.get(AOR, NOW) == expected
        await reopened.close()


@pytest.mark.asyncio
async def test_remove_token_queued_behind_an_apply_sees_it(store: BindingStore) -> None:
    await asyncio.gather(
        store.apply(AOR, [binding("a", push=FCM)], []),
        store.remove_token("tok-fcm"),
    )
    (found,) = await store.get(AOR, NOW)
    assert found.push is None


@pytest.mark.asyncio
async def test_closed_store_refuses_work(backend: Backend[BindingStore], tmp_path: Path) -> None:
    opened = await backend.open(tmp_path)
    await opened.close()
    with pytest.raises(StoreError):
        await opened.get(AOR, NOW)
    with pytest.raises(StoreError):
        await opened.apply(AOR, [binding("a")], [])


@pytest.mark.asyncio
async def test_bindings_survive_a_restart(
    persistent: Backend[BindingStore], tmp_path: Path
) -> None:
    full = binding(
        UUID1,
        instance=UUID1,
        reg_id=1,
        q=0.5,
        path=("<sip:edge1;lr>", "<sip:edge2;lr>"),
        push=APNS,
        pnsreg=True,
        user_agent="Linphone/5.2",
        flow=Endpoint("tls", "2001:db8::1", 5061, 42),
    )
    bare = binding("plain", cseq=7)
    first = await persistent.open(tmp_path)
    await first.apply(AOR, [full, bare], [])
    await first.apply(AOR, [binding("gone")], [])
    await first.apply(AOR, [], ["gone"])
    await first.remove_token("tok-remote")
    await first.close()

    second = await persistent.open(tmp_path)
    try:
        found = await second.get(AOR, NOW)
        # Flow ids name connections of the old process: they do not survive it.
        expected_flow = Endpoint("tls", "2001:db8::1", 5061, None)
        expected_push = APNS.replace(tokens=(("voip", "tok-voip"),))
        assert found == [full.replace(flow=expected_flow, push=expected_push), bare]
        assert [b.key for b in await second.with_token("tok-voip", NOW)] == [UUID1]
        assert await second.with_token("tok-remote", NOW) == []
    finally:
        await second.close()


def test_json_form_round_trips() -> None:
    full = binding(UUID1, instance=UUID1, reg_id=2, q=1.0, path=("<sip:e;lr>",), push=APNS)
    assert binding_from_json(binding_to_json(full)) == full
    assert binding_from_json(binding_to_json(binding("x"))) == binding("x")
