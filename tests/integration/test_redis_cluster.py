"""Two sipushd nodes sharing one Redis: bindings, stored MESSAGEs and wake-ups cross nodes.

Each test runs two in-process `Daemon`s (`storage.backend: redis`, one private
`redis-server`, different SIP ports) and talks to them with the shipped test UA.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.core.binding import Binding
from sipushd.store.redis_bindings import RedisBindingStore
from tests.integration.proxy_helpers import (
    VOIP_PARAMS,
    PushRecorder,
    address,
    answer,
    contact_of,
    invite,
    phone,
    register,
)
from tests.store.redis_server import RedisServer

pytestmark = pytest.mark.redis

BOB = "sip:bob@example.org"


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    server = RedisServer(tmp_path).start()
    try:
        yield server.url
    finally:
        server.stop()


def node_config(redis_url: str) -> Config:
    raw: dict[str, Any] = {
        "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
        "storage": {"backend": "redis", "redis": {"url": redis_url, "key_prefix": "it:"}},
        "push": {"mock": {"enabled": True}},
        "routing": {"call_timeout": 5},
        "admin": {"listen": "127.0.0.1:0"},
        "logging": {"level": "warning"},
    }
    return Config.model_validate(raw)


@asynccontextmanager
async def cluster(redis_url: str) -> AsyncIterator[tuple[Daemon, Daemon, PushRecorder]]:
    """Nodes A and B on one Redis; A's pushes are recorded."""
    a, b = Daemon(node_config(redis_url)), Daemon(node_config(redis_url))
    await a.start()
    try:
        await b.start()
        try:
            assert a.proxy is not None and a.dispatcher is not None
            recorder = PushRecorder(a.dispatcher)
            a.proxy.pushes = recorder
            yield a, b, recorder
        finally:
            await b.stop(0)
    finally:
        await a.stop(0)


@pytest.mark.asyncio
async def test_a_binding_registered_on_one_node_is_listed_by_the_other(redis_url: str) -> None:
    async with cluster(redis_url) as (a, b, _):
        assert isinstance(b.store, RedisBindingStore)
        heard: asyncio.Queue[Binding] = asyncio.Queue()
        await b.store.subscribe(heard.put_nowait)
        ua = await phone(a, "udp")
        ok = await register(ua, uuid=1)
        assert ok.status == 200
        # RFC 3261 §10.3: a REGISTER without Contact lists the AOR's bindings, on any node.
        ua_b = await phone(b, "udp")
        query = ua_b.build("REGISTER", "sip:example.org", [], to=BOB, from_=BOB)
        ua_b.send(query)
        listed = await ua_b.final_response()
        assert listed.status == 200
        assert [str(c.uri) for c in listed.contacts] == [contact_of(ua)]
        (found,) = await b.store.get(BOB, time.time())
        assert found.flow.flow is None  # the flow id is node A's
        # Node A published the registration; node B heard it.
        event = await asyncio.wait_for(heard.get(), 5)
        assert (event.aor, event.contact) == (BOB, contact_of(ua))
        await ua.close()
        await ua_b.close()


@pytest.mark.asyncio
async def test_a_call_held_on_node_a_is_forked_when_the_phone_registers_on_node_b(
    redis_url: str,
) -> None:
    async with cluster(redis_url) as (a, b, pushes):
        asleep = await phone(a)
        assert (await register(asleep, params=VOIP_PARAMS, uuid=1)).status == 200
        await asleep.close()  # the app's connection died with it
        caller = await phone(a, "udp")
        call = invite(caller)
        caller.send(call)
        (push,) = await pushes.wait_for(1)
        assert push.call_id == call.call_id
        # The push woke the phone; it registers over UDP with node B.
        awake = await phone(b, "udp")
        assert (await register(awake, params=VOIP_PARAMS, uuid=1)).status == 200
        forwarded = await awake.next_request("INVITE")
        assert forwarded.call_id == call.call_id
        # RFC 3261 §18.2.2: the answer goes to the top Via, node A.
        assert forwarded.top_via.port == address(a, "udp")[1]
        awake.server = address(a, "udp")
        answer(awake, forwarded, 200)
        ok = await caller.final_response()
        assert ok.status == 200
        assert a.proxy is not None and a.proxy.held_calls == 0
        await awake.close()
        await caller.close()
