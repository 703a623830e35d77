"""REGISTERs of one AOR in flight together, and a store that fails, on real sockets.

The registrar decides a REGISTER from the bindings in memory and answers it once the
change is committed; REGISTERs of one AOR wait for each other (RFC 3261 §10.3: each
one sees the bindings the previous one left), and a failed commit gets 500 (§10.3
step 7) without holding up the AOR's next REGISTER.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from sipushd.sip import Response
from tests.integration.test_register import (
    AOR,
    contact,
    instance,
    make_config,
    phone,
    register,
    register_request,
    running,
)


def contact_users(response: Response) -> list[str]:
    return sorted(c.uri.user or "" for c in response.contacts)


@pytest.mark.asyncio
async def test_registers_of_one_aor_sent_together_each_see_the_previous(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon) as ua:
        devices = [f"dev{n}" for n in range(6)]
        for n, device in enumerate(devices):
            # One Call-ID per device, none waiting for an answer before the next leaves.
            request = register_request(ua, [f"{contact(ua, user=device)};{instance(n)}"])
            ua.send(request.replace(headers=request.headers.set("Call-ID", f"call-{device}")))
        answers: dict[str, Response] = {}
        for _ in devices:
            response = await ua.final_response()
            assert response.status == 200
            answers[response.call_id.removeprefix("call-")] = response
        # The n-th REGISTER's 200 lists its own binding and every one before it.
        for n, device in enumerate(devices):
            assert contact_users(answers[device]) == sorted(devices[: n + 1])
        assert len(daemon.registrar._queued) == 0


@pytest.mark.asyncio
async def test_registers_of_other_aors_do_not_wait_for_each_other(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon) as ua:
        users = [f"user{n}" for n in range(5)]
        for user in users:
            request = register_request(ua, [contact(ua, user=user)], user=user)
            ua.send(request.replace(headers=request.headers.set("Call-ID", f"call-{user}")))
        for _ in users:
            response = await ua.final_response()
            assert response.status == 200
            assert contact_users(response) == [response.call_id.removeprefix("call-")]
        for user in users:
            assert len(await daemon.store.get(f"sip:{user}@example.org", 0)) == 1


@pytest.mark.asyncio
async def test_a_failed_commit_gets_500_and_the_aor_registers_next_time(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    async with running(config):
        pass  # creates the database and its schema
    database = sqlite3.connect(tmp_path / "bindings.db", timeout=10)
    # SQLite itself refuses alice's rows while she is listed in refused_aors.
    database.executescript(
        "CREATE TABLE refused_aors (aor TEXT);"
        "INSERT INTO refused_aors VALUES ('sip:alice@example.org');"
        "CREATE TRIGGER refuse BEFORE INSERT ON bindings"
        " WHEN NEW.aor IN (SELECT aor FROM refused_aors)"
        " BEGIN SELECT RAISE(ABORT, 'disk full'); END;"
    )
    try:
        async with running(config) as daemon, phone(daemon) as ua:
            failed = await register(ua, [contact(ua)])
            assert failed.status == 500
            assert failed.reason == "Binding Store Unavailable"
            # The 500 replaces a 200 prepared before the commit: none of the 200's bindings.
            assert "Contact" not in failed.headers and failed.contacts == []
            assert failed.to.tag is not None and failed.cseq.method == "REGISTER"
            assert await daemon.store.get(AOR, 0) == []
            # A REGISTER queued behind the failing one is answered too, not left waiting.
            for call_id, user in (("q1", "a1"), ("q2", "a2")):
                request = register_request(ua, [contact(ua, user=user)])
                ua.send(request.replace(headers=request.headers.set("Call-ID", call_id)))
            assert [(await ua.final_response()).status for _ in range(2)] == [500, 500]
            database.execute("DELETE FROM refused_aors")
            database.commit()
            ok = await register(ua, [contact(ua)])
            assert ok.status == 200
            stored = await daemon.store.get(AOR, 0)
            assert [b.contact for b in stored] == [str(ok.contacts[0].uri)]
            assert len(daemon.registrar._queued) == 0
    finally:
        database.close()
