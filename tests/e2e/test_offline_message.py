"""A MESSAGE for a sleeping phone survives a restart of `sipushd run` (RFC 3428, RFC 8599).

The phone registers over TCP with APNs push parameters and drops its connection. A
sender's MESSAGE gets an alert push carrying its Call-ID (the in-process mock provider
logs it) and `202 Accepted`. sipushd is stopped and started again on the same SQLite
file; when the phone registers, it gets the MESSAGE exactly once.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from sipushd.sip import Request
from sipushd.testing.ua import SipClient
from tests.e2e.conftest import SipushdProcess, start_sipushd

AOR = "sip:bob@example.org"
PUSH_PARAMS = "pn-provider=apns;pn-param=ABCD1234.org.example.app;pn-prid=44ee55ff"
OVERRIDES: dict[str, object] = {
    "push": {"mock": {"enabled": True}},
    "routing": {"message_accept_timeout": 0.5},
}


async def start(tmp_path: Path) -> SipushdProcess:
    return await asyncio.to_thread(start_sipushd, tmp_path, OVERRIDES)


async def stop(server: SipushdProcess) -> None:
    assert await asyncio.to_thread(server.stop) == 0, server.log()[-3000:]


async def register(server: SipushdProcess) -> SipClient:
    phone = await SipClient.connect("tcp", ("127.0.0.1", server.port))
    host, port = phone.local
    contact = (
        f"<sip:bob@{host}:{port};transport=tcp;{PUSH_PARAMS}>"
        ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"'
    )
    request = phone.build(
        "REGISTER", "sip:example.org", [("Contact", contact), ("Expires", "600")], to=AOR, from_=AOR
    )
    phone.send(request)
    response = await phone.final_response()
    assert response.status == 200, response
    return phone


def events(server: SipushdProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


async def pushed(server: SipushdProcess, call_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The mock provider's log line for the push of `call_id`."""
    async with asyncio.timeout(timeout):
        while True:
            for event in events(server, "push recorded"):
                if event.get("call_id") == call_id:
                    return event
            await asyncio.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.asyncio
async def test_offline_message_is_pushed_accepted_and_delivered_once_after_a_restart(
    tmp_path: Path,
) -> None:
    server = await start(tmp_path)
    try:
        phone = await register(server)
        await phone.close()  # the app is suspended: its connection is gone
        async with await SipClient.connect("udp", ("127.0.0.1", server.port)) as sender:
            message: Request = sender.build(
                "MESSAGE",
                AOR,
                [("Content-Type", "text/plain;charset=utf-8")],
                "Grüße".encode(),
                from_="sip:alice@example.net",
                call_id=f"offline-{time.monotonic_ns()}",
            )
            sender.send(message)
            answer = await sender.final_response(timeout=10)
        assert answer.status == 202, answer
        push = await pushed(server, message.call_id)
        assert push["kind"] == "message"
        assert push["payload"]["call_id"] == message.call_id
    finally:
        await stop(server)

    server = await start(tmp_path)  # same SQLite file, new process
    try:
        phone = await register(server)
        got = await phone.next_request("MESSAGE", timeout=10)
        assert (got.call_id, got.body) == (message.call_id, "Grüße".encode())
        assert got.from_.uri == message.from_.uri
        phone.answer(got, 200)
        # A refresh after the 200 brings nothing again.
        host, port = phone.local
        refresh = phone.build(
            "REGISTER",
            "sip:example.org",
            [
                (
                    "Contact",
                    f"<sip:bob@{host}:{port};transport=tcp;{PUSH_PARAMS}>"
                    ';+sip.instance="<urn:uuid:00000000-0000-0000-0000-000000000001>"',
                ),
                ("Expires", "600"),
            ],
            to=AOR,
            from_=AOR,
        )
        phone.send(refresh)
        assert (await phone.final_response()).status == 200
        with pytest.raises(TimeoutError):
            await phone.next_request("MESSAGE", timeout=0.5)
        await phone.close()
        sent = [e for e in events(server, "stored message sent") if e.get("status") == 200]
        assert [e["call_id"] for e in sent] == [message.call_id]
    finally:
        await stop(server)
