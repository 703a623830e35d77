"""The admin HTTP API over real loopback sockets, against an in-process daemon."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from sipushd.admin.api import jsonable
from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.core.pushparams import PushTarget
from sipushd.sip import Endpoint, Response
from sipushd.store.base import StoreError
from sipushd.testing.ua import SipClient

TOKEN = "admin-token-0123456789"
PUSH_TOKEN = "feedface" * 8
PUSH_PARAMS = f"pn-provider=apns;pn-param=ABCD1234.org.example.app.voip;pn-prid={PUSH_TOKEN}"
INSTANCE = "<urn:uuid:00000000-0000-0000-0000-000000000001>"


def _config(tmp_path: Path, token: str | None, **sections: Any) -> Config:
    admin: dict[str, Any] = {"listen": "127.0.0.1:0"}
    if token is not None:
        admin["token"] = token
    raw = {
        "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0"]},
        "storage": {"sqlite": {"path": str(tmp_path / "db.sqlite")}},
        "push": {"mock": {"enabled": True}},
        "admin": admin,
    }
    return Config.model_validate(raw | sections)


async def _running(config: Config) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    daemon = Daemon(config)
    await daemon.start()
    assert daemon.admin is not None
    host, port = daemon.admin.address
    headers = {"Authorization": f"Bearer {TOKEN}"} if config.admin.token else {}
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}", headers=headers) as client:
            yield daemon, client
    finally:
        await daemon.stop(0)


@pytest_asyncio.fixture
async def api(tmp_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """A daemon with an admin token, and a client that sends it."""
    async for running in _running(_config(tmp_path, TOKEN)):
        yield running


@pytest_asyncio.fixture
async def open_api(tmp_path: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    """A daemon without an admin token."""
    async for running in _running(_config(tmp_path, None)):
        yield running


async def _register(daemon: Daemon, user: str, params: str = "", instance: str = "") -> Response:
    udp = next(e for e in daemon.listeners if e.transport == "udp")
    async with await SipClient.connect("udp", (udp.host, udp.port)) as ua:
        contact = f"<sip:{user}@{ua.local[0]}:{ua.local[1]}{';' + params if params else ''}>"
        if instance:
            contact += f';+sip.instance="{instance}"'
        request = ua.build(
            "REGISTER",
            "sip:example.org",
            [("Contact", contact), ("Expires", "600")],
            to=f"sip:{user}@example.org",
            from_=f"sip:{user}@example.org",
        )
        ua.send(request)
        return await ua.final_response()


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# --- authentication -----------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/metrics"), ("GET", "/bindings/bob@example.org"), ("GET", "/held"), ("GET", "/x")],
)
async def test_with_a_token_every_route_wants_the_bearer(
    api: tuple[Daemon, httpx.AsyncClient], method: str, path: str
) -> None:
    _, client = api
    bare = await client.request(method, path, headers={"Authorization": ""})
    assert bare.status_code == 401
    assert bare.headers["WWW-Authenticate"] == 'Bearer realm="sipushd"'
    wrong = await client.request(method, path, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert 'error="invalid_token"' in wrong.headers["WWW-Authenticate"]
    basic = await client.request(method, path, headers={"Authorization": f"Basic {TOKEN}"})
    assert basic.status_code == 401
    good = await client.request(method, path)
    assert good.status_code != 401


@pytest.mark.asyncio
async def test_health_without_the_token_tells_only_the_status(
    api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    _, client = api
    anonymous = await client.get("/health", headers={"Authorization": ""})
    assert anonymous.status_code == 200
    assert anonymous.json() == {"status": "ok"}
    detailed = await client.get("/health")
    assert detailed.status_code == 200
    body = detailed.json()
    assert body["status"] == "ok"
    assert body["checks"] == {"listeners": "ok", "store": "ok", "state": "running"}
    assert body["listeners"] and body["listeners"][0].startswith("udp:127.0.0.1:")


@pytest.mark.asyncio
async def test_without_a_configured_token_routes_are_open(
    open_api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    _, client = open_api
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert (await client.get("/health")).json()["checks"]["store"] == "ok"


# --- metrics and health -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_metrics_are_prometheus_text_and_move_with_traffic(
    api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    daemon, client = api
    first = await client.get("/metrics")
    assert first.status_code == 200
    assert first.headers["Content-Type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(first.text)}
    assert {
        "sipushd_register_results",
        "sipushd_bindings",
        "sipushd_pushes",
        "sipushd_push_latency_seconds",
        "sipushd_connections",
        "sipushd_held_requests",
        "sipushd_build_info",
    } <= names
    before = _samples(first.text)

    assert (await _register(daemon, "carol", PUSH_PARAMS, INSTANCE)).status == 200
    assert (await _register(daemon, "dave")).status == 200

    after = _samples((await client.get("/metrics")).text)
    name = "sipushd_register_results_total"
    assert _value(after, name, status="200") == _value(before, name, status="200") + 2
    assert _value(after, "sipushd_bindings", with_push="true", provider="apns") == 1
    assert _value(after, "sipushd_bindings", with_push="false", provider="none") == 1


@pytest.mark.asyncio
async def test_health_is_503_when_the_store_fails(
    api: tuple[Daemon, httpx.AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, client = api

    async def broken(now: float) -> int:
        raise StoreError("disk on fire")

    assert daemon.store is not None
    monkeypatch.setattr(daemon.store, "count", broken)
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["checks"]["store"] == "error: disk on fire"


@pytest.mark.asyncio
async def test_health_is_503_while_stopping(api: tuple[Daemon, httpx.AsyncClient]) -> None:
    daemon, client = api
    daemon.stopping = True
    response = await client.get("/health")
    assert response.status_code == 503
    assert response.json()["checks"]["state"] == "stopping"


# --- bindings -----------------------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "aor", ["bob@example.org", "sip:bob@example.org", quote("sip:bob@example.org", safe="")]
)
async def test_bindings_of_an_aor_hide_push_tokens(
    api: tuple[Daemon, httpx.AsyncClient], aor: str
) -> None:
    daemon, client = api
    assert (await _register(daemon, "bob", PUSH_PARAMS, INSTANCE)).status == 200
    response = await client.get(f"/bindings/{aor}")
    assert response.status_code == 200
    [binding] = response.json()
    assert binding["aor"] == "sip:bob@example.org"
    assert binding["instance"] == INSTANCE
    assert binding["push"]["provider"] == "apns"
    assert binding["push"]["tokens"] == [["voip", "feedface…(64)"]]
    assert 0 < binding["expires_in"] <= 600
    assert PUSH_TOKEN not in response.text
    assert "pn-prid=feedface…(64)" in binding["contact"]


@pytest.mark.asyncio
async def test_delete_one_binding_by_instance(api: tuple[Daemon, httpx.AsyncClient]) -> None:
    daemon, client = api
    other = "<urn:uuid:00000000-0000-0000-0000-000000000002>"
    assert (await _register(daemon, "bob", PUSH_PARAMS, INSTANCE)).status == 200
    assert (await _register(daemon, "bob", "", other)).status == 200
    assert len((await client.get("/bindings/bob@example.org")).json()) == 2

    path = f"/bindings/bob@example.org/{quote(INSTANCE, safe='')}"
    deleted = await client.delete(path)
    assert deleted.status_code == 200
    assert [b["instance"] for b in deleted.json()["removed"]] == [INSTANCE]
    [left] = (await client.get("/bindings/bob@example.org")).json()
    assert left["instance"] == other

    assert (await client.delete(path)).status_code == 404
    bare = quote(other.strip("<>"), safe="")  # the instance without its brackets works too
    assert (await client.delete(f"/bindings/sip:bob@example.org/{bare}")).status_code == 200
    assert (await client.get("/bindings/bob@example.org")).json() == []
    assert (await client.get("/bindings")).json() == {"aors": [], "count": 0}


@pytest.mark.asyncio
async def test_bad_aor_is_400(api: tuple[Daemon, httpx.AsyncClient]) -> None:
    _, client = api
    for aor in ("example.org", "sip:", "tel:+123", "%00"):
        response = await client.get(f"/bindings/{aor}")
        assert response.status_code == 400, aor
        assert "error" in response.json()


# --- held requests, messages --------------------------------------------------------------


@pytest.mark.asyncio
async def test_held_and_messages_answer_lists(api: tuple[Daemon, httpx.AsyncClient]) -> None:
    _, client = api
    held = await client.get("/held")
    assert held.status_code == 200
    assert held.json()["held"] == []
    messages = await client.get("/messages/bob@example.org")
    assert messages.status_code == 200
    assert messages.json()["aor"] == "sip:bob@example.org"
    assert messages.json()["messages"] == []


@pytest.mark.asyncio
async def test_held_lists_an_invite_waiting_for_a_pushed_phone(
    api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    daemon, client = api
    assert (await _register(daemon, "bob", PUSH_PARAMS, INSTANCE)).status == 200
    udp = next(e for e in daemon.listeners if e.transport == "udp")
    async with await SipClient.connect("udp", (udp.host, udp.port)) as caller:
        contact = f"<sip:alice@{caller.local[0]}:{caller.local[1]}>"
        invite = caller.build(
            "INVITE",
            "sip:bob@example.org",
            [("Contact", contact), ("Content-Type", "application/sdp")],
            b"v=0\r\n",
        )
        caller.send(invite)
        async with asyncio.timeout(5):
            while True:
                message = await caller.receive()
                if isinstance(message, Response) and message.status == 110:
                    break  # RFC 8599 §5.6.2: the push went out, the INVITE is held
        response = await client.get("/held")
    assert response.status_code == 200
    [held] = response.json()["held"]
    assert held["call_id"] == invite.call_id
    assert held["aor"] == "sip:bob@example.org"
    assert [d["instance"] for d in held["devices"]] == [INSTANCE]
    assert PUSH_TOKEN not in response.text


@pytest.mark.asyncio
async def test_messages_lists_what_is_stored_for_a_sleeping_phone(tmp_path: Path) -> None:
    config = _config(tmp_path, None, routing={"message_accept_timeout": 0.2})
    async for daemon, client in _running(config):
        assert (await _register(daemon, "bob", PUSH_PARAMS, INSTANCE)).status == 200
        udp = next(e for e in daemon.listeners if e.transport == "udp")
        async with await SipClient.connect("udp", (udp.host, udp.port)) as alice:
            message = alice.build(
                "MESSAGE",
                "sip:bob@example.org",
                [("Content-Type", "text/plain")],
                b"hello",
                from_="sip:alice@example.net",
            )
            alice.send(message)
            assert (await alice.final_response()).status == 202
        response = await client.get("/messages/sip:bob@example.org")
        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 1
        [stored] = body["messages"]
        assert stored["call_id"] == message.call_id
        assert stored["sender"] == "sip:alice@example.net"
        assert stored["waiting"] == [INSTANCE]
        assert stored["size"] > len(b"hello")
        assert "hello" not in response.text


# --- push-test ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_push_test_goes_through_the_mock_provider(
    api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    _, client = api
    labels = {"provider": "apns", "type": "voip", "result": "delivered"}
    before = _value(_samples((await client.get("/metrics")).text), "sipushd_pushes_total", **labels)
    body = {"provider": "apns", "app": "org.example.app", "token": PUSH_TOKEN, "type": "voip"}
    response = await client.post("/push-test", json=body)
    assert response.status_code == 200
    answer = response.json()
    assert answer["result"] == "delivered"
    assert answer["status"] == 200
    assert answer["push_id"].startswith("mock-")
    assert PUSH_TOKEN not in response.text
    after = _value(_samples((await client.get("/metrics")).text), "sipushd_pushes_total", **labels)
    assert after == before + 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[1, 2]",
        b"",
        json.dumps({"provider": "apns", "app": "org.example.app"}).encode(),
        json.dumps({"provider": "x", "app": "a.b", "token": "t"}).encode(),
        json.dumps({"provider": "fcm", "app": "a.b", "token": "t", "type": "nope"}).encode(),
        json.dumps({"provider": "fcm", "app": "a.b", "token": 5}).encode(),
        json.dumps({"provider": "fcm", "app": "a.b", "token": "t", "ttl": True}).encode(),
        json.dumps({"provider": "fcm", "app": "a.b", "token": "t", "ttl": 0}).encode(),
    ],
)
async def test_push_test_with_bad_input_is_400(
    api: tuple[Daemon, httpx.AsyncClient], body: bytes
) -> None:
    _, client = api
    response = await client.post("/push-test", content=body)
    assert response.status_code == 400
    assert response.json()["error"]


# --- HTTP edges ---------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_unknown_path_404_and_wrong_method_405(
    api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    _, client = api
    assert (await client.get("/nope")).status_code == 404
    assert (await client.get("/bindings/a@b/c/d")).status_code == 404
    wrong = await client.post("/metrics")
    assert wrong.status_code == 405
    assert wrong.headers["Allow"] == "GET, HEAD"
    assert (await client.get("/push-test")).headers["Allow"] == "POST"
    head = await client.head("/metrics")
    assert head.status_code == 200
    assert head.content == b""


async def _exchange(daemon: Daemon, data: bytes) -> bytes:
    assert daemon.admin is not None
    reader, writer = await asyncio.open_connection(*daemon.admin.address)
    writer.write(data)
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
        await writer.wait_closed()


AUTH = f"Authorization: Bearer {TOKEN}\r\n".encode()


@pytest.mark.asyncio
async def test_keep_alive_serves_pipelined_requests_on_one_connection(
    api: tuple[Daemon, httpx.AsyncClient],
) -> None:
    daemon, _ = api
    one = b"GET /held HTTP/1.1\r\nHost: x\r\n" + AUTH + b"\r\n"
    last = b"GET /health HTTP/1.1\r\nHost: x\r\n" + AUTH + b"Connection: close\r\n\r\n"
    answer = await _exchange(daemon, one + one + last)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert b'"checks"' in answer


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"garbage\r\n\r\n", b"400"),
        (b"\x00\xff\r\n\r\n", b"400"),
        (b"GET /held HTTP/1.1\r\n\r\n", b"400"),  # HTTP/1.1 without Host (RFC 9112 §3.2)
        (b"POST /push-test HTTP/1.1\r\nHost: x\r\nContent-Length: 9999999\r\n\r\n", b"413"),
        (
            b"POST /push-test HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            + (b"ffff\r\n" + b"a" * 0xFFFF + b"\r\n") * 2
            + b"0\r\n\r\n",
            b"413",
        ),
    ],
)
async def test_bad_requests_are_refused_and_the_server_keeps_serving(
    api: tuple[Daemon, httpx.AsyncClient], data: bytes, status: bytes
) -> None:
    daemon, client = api
    answer = await _exchange(daemon, data)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"Connection: close" in answer
    assert (await client.get("/health")).status_code == 200


def test_jsonable_shows_value_objects_field_by_field_with_tokens_redacted() -> None:
    assert jsonable(Endpoint("tcp", "192.0.2.1", 5061, 7)) == {
        "transport": "tcp",
        "host": "192.0.2.1",
        "port": 5061,
        "flow": 7,
    }
    token = "0123456789abcdef" * 4
    shown = jsonable(PushTarget("apns", False, "org.example.app", "ABCD1234", (("voip", token),)))
    assert shown["app_id"] == "org.example.app"
    assert token not in str(shown)
