"""`sipushd bindings`: the stored bindings per AOR, push tokens never printed in full."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest
import yaml

from sipushd.cli import main
from sipushd.core.binding import Binding
from sipushd.core.pushparams import PushTarget
from sipushd.sip import Endpoint
from sipushd.store.sqlite import SqliteBindingStore

VOIP = "8e5c2ba3f1e84c3bb1f0a7d1c7a2f7e0d4b1c6a9e2f3d4c5b6a7980f1e2d3c4b"
REMOTE = "5f4e3d2c1b0a99887766554433221100ffeeddccbbaa99887766554433221100"
UUID = "<urn:uuid:5e9a8a5b-4e5c-4a1d-9c1b-6b1e0f2a3b4c>"


def phone(aor: str, now: float, *, expires: float = 600, key: str = UUID) -> Binding:
    push = PushTarget(
        "apns", True, "org.example.app", "ABCD1234", (("voip", VOIP), ("remote", REMOTE))
    )
    contact = (
        "sip:alice@192.0.2.10:49152;transport=tcp;pn-provider=apns.dev;"
        f"pn-param=ABCD1234.org.example.app.voip%26remote;pn-prid={VOIP}:voip%26{REMOTE}:remote"
    )
    return Binding(
        aor=aor,
        key=key,
        contact=contact,
        expires_at=now + expires,
        call_id="call-1",
        cseq=3,
        flow=Endpoint("tcp", "192.0.2.10", 49152, None),
        registered_at=now,
        updated_at=now,
        instance=key,
        push=push,
        user_agent="Linphone/5.2 (iPhone)",
    )


def desk(aor: str, now: float) -> Binding:
    return Binding(
        aor=aor,
        key="sip:bob@[2001:db8::5]:5060",
        contact="sip:bob@[2001:db8::5]:5060",
        expires_at=now + 3600,
        call_id="call-2",
        cseq=1,
        flow=Endpoint("udp", "2001:db8::5", 5060, None),
        registered_at=now,
        updated_at=now,
    )


def write_config(tmp_path: Path, db: str) -> Path:
    path = tmp_path / "sipushd.yaml"
    config = {"sip": {"domains": ["example.org"]}, "storage": {"sqlite": {"path": db}}}
    path.write_text(yaml.safe_dump(config))
    return path


async def fill(db: Path, *bindings: Binding) -> None:
    store = await SqliteBindingStore.open(db)
    try:
        for binding in bindings:
            await store.apply(binding.aor, [binding], [])
    finally:
        await store.close()


@pytest.fixture
def config(tmp_path: Path) -> Path:
    now = time.time()
    db = tmp_path / "bindings.db"
    asyncio.run(
        fill(
            db,
            phone("sip:alice@example.org", now),
            desk("sip:bob@example.org", now),
            phone("sip:carol@example.org", now - 1000, key="<urn:uuid:old>"),  # expired
        )
    )
    return write_config(tmp_path, str(db))


def test_text_lists_every_live_binding_with_tokens_shortened(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bindings", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "sip:alice@example.org: 1 binding" in out
    assert "sip:bob@example.org: 1 binding" in out
    assert "carol" not in out  # expired
    assert VOIP not in out and REMOTE not in out
    assert f"voip {VOIP[:8]}…(64), remote {REMOTE[:8]}…(64)" in out
    assert "apns.dev org.example.app (team ABCD1234)" in out
    assert UUID in out
    assert "flow        tcp 192.0.2.10:49152" in out
    assert "flow        udp [2001:db8::5]:5060" in out
    assert "Linphone/5.2 (iPhone)" in out
    expires = [line for line in out.splitlines() if "expires in" in line]
    assert len(expires) == 2 and all(line.endswith(" s") for line in expires)


@pytest.mark.parametrize("aor", ["alice@example.org", "sip:alice@example.org", "alice@EXAMPLE.ORG"])
def test_json_for_one_aor(config: Path, capsys: pytest.CaptureFixture[str], aor: str) -> None:
    assert main(["bindings", "--config", str(config), aor, "--json"]) == 0
    out = capsys.readouterr().out
    assert VOIP not in out and REMOTE not in out
    data = json.loads(out)
    assert list(data) == ["sip:alice@example.org"]
    [binding] = data["sip:alice@example.org"]
    assert binding["instance"] == UUID
    assert binding["push"]["provider"] == "apns" and binding["push"]["sandbox"] is True
    assert binding["push"]["tokens"] == [
        ["voip", f"{VOIP[:8]}…(64)"],
        ["remote", f"{REMOTE[:8]}…(64)"],
    ]
    assert 0 < binding["expires_in"] <= 600
    assert binding["user_agent"] == "Linphone/5.2 (iPhone)"


def test_an_aor_without_bindings_is_not_an_error(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bindings", "--config", str(config), "nobody@example.org", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"sip:nobody@example.org": []}
    assert main(["bindings", "--config", str(config), "nobody@example.org"]) == 0
    assert "sip:nobody@example.org: no bindings" in capsys.readouterr().out


def test_an_empty_store_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "empty.db"
    asyncio.run(fill(db))
    assert main(["bindings", "--config", str(write_config(tmp_path, str(db)))]) == 0
    assert capsys.readouterr().out == "no bindings\n"


def test_a_missing_database_is_not_created(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "nowhere.db"
    assert main(["bindings", "--config", str(write_config(tmp_path, str(db)))]) == 1
    assert "no binding database" in capsys.readouterr().err
    assert not db.exists()


def test_memory_store_cannot_be_read_from_outside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["bindings", "--config", str(write_config(tmp_path, ":memory:"))]) == 1
    assert ":memory:" in capsys.readouterr().err


def test_bad_config_and_bad_aor(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("sip: {domains: []}\n")
    assert main(["bindings", "--config", str(broken)]) == 1
    assert "invalid config" in capsys.readouterr().err
    assert main(["bindings", "--config", str(broken), "@example.org"]) == 2
    assert "bad AOR" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_reads_while_the_daemon_holds_the_database(tmp_path: Path) -> None:
    db = tmp_path / "live.db"
    config = write_config(tmp_path, str(db))
    store = await SqliteBindingStore.open(db)  # the daemon's connection, kept open (WAL)
    try:
        await store.apply(
            "sip:alice@example.org", [phone("sip:alice@example.org", time.time())], []
        )
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "sipushd", "bindings", "--config", str(config), "--json",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(child.communicate(), 30)
    finally:
        await store.close()
    assert child.returncode == 0, err.decode()
    data = json.loads(out)
    assert [b["instance"] for b in data["sip:alice@example.org"]] == [UUID]
