"""`sipushd mock-pns` as a process: ready line, --on-push, --respond, SIGTERM; bad rules."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from sipushd.testing import mock_pns
from sipushd.testing.mock_pns import MockPushService
from tests.testing.helpers import TOKEN, apns_headers, h2_client

ROOT = Path(__file__).resolve().parents[2]
# The module entry point without the rest of the CLI, for when other commands' modules
# are not importable yet.
DIRECT = (
    "import argparse, sys; from sipushd.testing import mock_pns; "
    "p = argparse.ArgumentParser(); mock_pns.add_arguments(p); "
    "sys.exit(mock_pns.run(p.parse_args()))"
)
needs_cli = pytest.mark.skipif(
    importlib.util.find_spec("sipushd.app") is None,
    reason="sipushd.cli imports sipushd.app, which does not exist yet",
)
LAUNCHERS = [
    pytest.param(["-m", "sipushd", "mock-pns"], id="sipushd-cli", marks=needs_cli),
    pytest.param(["-c", DIRECT], id="module"),
]
HOOK = (
    'cat > "$OUT/$SIPUSHD_PUSH_TOKEN.json"; '
    'env | grep ^SIPUSHD_PUSH_ > "$OUT/$SIPUSHD_PUSH_TOKEN.env"'
)
VOIP = {"aps": {}, "call_id": "c1"}


@pytest.mark.asyncio
async def test_on_push_command_gets_the_push_on_stdin_and_env(
    state_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OUT", str(tmp_path))
    svc = MockPushService(state_dir, on_push=HOOK, rules=["token=dead:410"])
    async with svc, h2_client(svc) as client:
        answer = await client.post(f"/3/device/{TOKEN}", headers=apns_headers(), json=VOIP)
        assert answer.status_code == 200
        await client.post("/3/device/dead", headers=apns_headers(), json=VOIP)
    # stop() has waited for the running commands
    record = json.loads((tmp_path / f"{TOKEN}.json").read_text())
    env = (tmp_path / f"{TOKEN}.env").read_text()
    assert record["token"] == TOKEN
    assert record["payload"] == VOIP
    assert record["headers"]["apns-push-type"] == "voip"
    assert sorted(env.split()) == [
        "SIPUSHD_PUSH_PROVIDER=apns",
        f"SIPUSHD_PUSH_TOKEN={TOKEN}",
        "SIPUSHD_PUSH_TYPE=voip",
    ]
    assert not (tmp_path / "dead.json").exists()  # refused pushes run no command


@pytest.mark.asyncio
@pytest.mark.parametrize("launcher", LAUNCHERS)
async def test_command_serves_until_sigterm(launcher: list[str], tmp_path: Path) -> None:
    record = tmp_path / "pushes.jsonl"
    args = ["--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")]
    args += ["--record", str(record), "--respond", "token=dead:410:Unregistered"]
    args += ["--on-push", "exit 3"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *launcher,
        *args,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        ready = (await asyncio.wait_for(proc.stdout.readline(), 60)).decode()
        prefix = "mock-pns listening on https://127.0.0.1:"
        assert ready.startswith(prefix), ready
        port = int(ready.removeprefix(prefix).split()[0])
        assert port != 0
        assert ready.split("ca=")[1].strip() == str(tmp_path / "state" / "ca.pem")
        context = ssl.create_default_context(cafile=str(tmp_path / "state" / "ca.pem"))
        async with httpx.AsyncClient(
            http2=True, verify=context, trust_env=False, base_url=f"https://127.0.0.1:{port}"
        ) as client:
            ok = await client.post(f"/3/device/{TOKEN}", headers=apns_headers(), json=VOIP)
            dead = await client.post("/3/device/dead", headers=apns_headers(), json=VOIP)
        assert (ok.status_code, dead.status_code) == (200, 410)
        # --on-push exit codes are logged on stderr
        while True:
            line = await asyncio.wait_for(proc.stderr.readline(), 60)
            assert line, "mock-pns exited early"
            if b"exited with status 3" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        status = await asyncio.wait_for(proc.wait(), 60)
    assert status == 0
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(line["token"], line["status"]) for line in lines] == [(TOKEN, 200), ("dead", 410)]


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_malformed_rule_exits_2_naming_the_rule(launcher: list[str], tmp_path: Path) -> None:
    args = ["--state-dir", str(tmp_path), "--respond", "token=abc:999:Nope"]
    done = subprocess.run(
        [sys.executable, *launcher, *args], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert "token=abc:999:Nope" in done.stderr
    assert not (tmp_path / "ca.pem").exists()


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (["--listen", "8443"], "8443"),
        (["--apns-key-file", "/nonexistent/AuthKey.p8"], "/nonexistent/AuthKey.p8"),
    ],
)
def test_bad_arguments_exit_2_naming_the_culprit(
    bad: list[str], named: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser()
    mock_pns.add_arguments(parser)
    try:
        status = mock_pns.run(parser.parse_args(["--state-dir", str(tmp_path), *bad]))
    except SystemExit as exc:  # argparse refuses it
        status = exc.code
    assert status == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "ca.pem").exists()
