"""The mock's control API and Python API: listing, long poll, clearing, rules, recording."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import httpx
import pytest

from sipushd.testing.mock_pns import MockPushService, RuleError, parse_rule
from tests.testing.helpers import TOKEN, apns_headers, h2_client

OTHER = "cd" * 32
PAYLOAD = {"aps": {"alert": "hi"}}


async def push(client: httpx.AsyncClient, token: str = TOKEN) -> httpx.Response:
    headers = apns_headers(apns_topic="org.example.app", apns_push_type="alert")
    return await client.post(f"/3/device/{token}", headers=headers, json=PAYLOAD)


@pytest.mark.asyncio
async def test_list_filter_since_and_clear(
    service: MockPushService, client: httpx.AsyncClient
) -> None:
    for token in (TOKEN, OTHER, TOKEN):
        assert (await push(client, token)).status_code == 200
    listed = (await client.get("/pushes")).json()
    assert [p["token"] for p in listed["pushes"]] == [TOKEN, OTHER, TOKEN]
    assert listed["next"] == 3
    assert listed["pushes"][0]["payload"] == PAYLOAD
    assert listed["pushes"][0]["headers"]["apns-push-type"] == "alert"
    only = (await client.get("/pushes", params={"token": OTHER})).json()["pushes"]
    assert [p["index"] for p in only] == [1]
    later = (await client.get("/pushes", params={"since": 1})).json()["pushes"]
    assert [p["index"] for p in later] == [1, 2]
    assert (await client.get("/pushes", params={"since": "x"})).status_code == 400
    assert (await client.delete("/pushes")).json() == {"cleared": 3}
    assert (await client.get("/pushes")).json()["pushes"] == []
    assert service.pushes == []
    await push(client)
    assert service.pushes[0].index == 3  # indexes keep counting after a clear


@pytest.mark.asyncio
async def test_long_poll_returns_when_a_matching_push_arrives(
    service: MockPushService, client: httpx.AsyncClient
) -> None:
    poll = asyncio.create_task(client.get("/pushes", params={"token": OTHER, "wait": 30}))
    # Push only once the poll is parked inside the service, so it must really wait.
    while not service._waiters:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await push(client, TOKEN)  # not the token the poll waits for
    await asyncio.sleep(0.05)
    assert not poll.done()
    await push(client, OTHER)
    pushes = (await poll).json()["pushes"]
    assert [p["token"] for p in pushes] == [OTHER]


@pytest.mark.asyncio
async def test_long_poll_gives_up_with_an_empty_list(client: httpx.AsyncClient) -> None:
    answer = await client.get("/pushes", params={"token": OTHER, "wait": 0.05})
    assert answer.json()["pushes"] == []


@pytest.mark.asyncio
async def test_wait_for_push_predicate_and_timeout(
    service: MockPushService, client: httpx.AsyncClient
) -> None:
    waiter = asyncio.create_task(service.wait_for_push(lambda p: p.token == OTHER))
    await push(client, TOKEN)
    await push(client, OTHER)
    found = await waiter
    assert (found.token, found.index) == (OTHER, 1)
    with pytest.raises(TimeoutError):
        await service.wait_for_push(lambda p: p.token == "ee", timeout=0.05)
    first = await service.wait_for_push(since=0)
    assert first.token == TOKEN


@pytest.mark.asyncio
async def test_rules_api(client: httpx.AsyncClient) -> None:
    answer = await client.put("/rules", json={"rules": ["provider=apns:503"]})
    assert answer.json() == {"rules": ["provider=apns:503"]}
    assert (await push(client)).json() == {"reason": "ServiceUnavailable"}
    bad = await client.put("/rules", json={"rules": ["token=x:999"]})
    assert bad.status_code == 400
    assert "token=x:999" in bad.json()["error"]
    assert (await client.get("/rules")).json() == {"rules": ["provider=apns:503"]}


@pytest.mark.asyncio
async def test_record_file_gets_one_json_line_per_push(state_dir: Path, tmp_path: Path) -> None:
    record = tmp_path / "pushes.jsonl"
    svc = MockPushService(state_dir, record=record)
    async with svc, h2_client(svc) as client:
        await push(client)
        await push(client, "zz")
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(line["token"], line["status"]) for line in lines] == [(TOKEN, 200), ("zz", 400)]
    assert lines[0] == svc.pushes[0].to_dict()


@pytest.mark.asyncio
async def test_http11_client_gets_an_answer(service: MockPushService) -> None:
    context = ssl.create_default_context(cafile=str(service.ca_file))
    async with httpx.AsyncClient(verify=context, trust_env=False) as client:
        answer = await client.get(f"{service.base_url}/pushes")
    assert answer.http_version == "HTTP/1.1"
    assert answer.json() == {"pushes": [], "next": 0}


def test_rule_syntax() -> None:
    rule = parse_rule("token=*:500:InternalServerError:first=2")
    assert (rule.token, rule.status, rule.reason, rule.first) == (
        "*",
        500,
        "InternalServerError",
        2,
    )
    fcm = parse_rule("provider=fcm,token=abc:APA91b-x:404:UNREGISTERED:retry-after=3")
    assert (fcm.provider, fcm.token, fcm.status, fcm.reason) == (
        "fcm",
        "abc:APA91b-x",
        404,
        "UNREGISTERED",
    )
    assert fcm.retry_after == "3"
    delay = parse_rule("delay=0.3")
    assert (delay.status, delay.delay) == (None, 0.3)
    assert parse_rule("token=ab*:410").matches("apns", "abcd")
    assert not parse_rule("token=ab*:410").matches("apns", "cd")
    assert not parse_rule("provider=fcm:503").matches("apns", "ab")


@pytest.mark.parametrize(
    "text",
    [
        "token=x:999",
        "token=x:200",
        "token=x",
        "tokn=x:410",
        "provider=gcm:410",
        "token=x:410:Bad Reason",
        "token=x:410:first=0",
        "token=x:410:first=two",
        "delay=-1",
        "token=x:429:retry-after=soon",
        "token=x:410:colour=red",
    ],
)
def test_bad_rules_are_refused_naming_the_rule(text: str) -> None:
    with pytest.raises(RuleError, match=f"'{text}'"):
        parse_rule(text)
