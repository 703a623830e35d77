"""Linphone (linphonec), a real softphone, registers with push params over TCP with digest auth.

sipushd runs as `sipushd run`; linphonec gets an RC whose proxy carries Linphone's RFC 8599
extension (`pn-provider=apns.dev`, `pn-param=TEAMID.bundle.voip&remote`,
`pn-prid=TOKEN:voip&TOKEN:remote`). The test then reads the stored binding back through
`sipushd bindings` (tokens redacted) and straight from the SQLite file (tokens in full).
"""

from __future__ import annotations

import asyncio
import configparser
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sipushd.core.binding import Binding
from sipushd.store.sqlite import SqliteBindingStore
from sipushd.testing.net import free_port
from sipushd.users import set_user
from tests.e2e.conftest import SipushdProcess, need, start_sipushd

PASSWORD = "linphone-e2e-secret"
AOR = "sip:bob@example.org"
PUSH_PARAMS = (
    "pn-provider=apns.dev;pn-param=ABCD1234.org.example.app.voip&remote;"
    "pn-prid=VOIPTOKEN:voip&REMOTETOKEN:remote"
)


def write_rc(path: Path, server_port: int) -> Path:
    """A linphonec RC: TCP only, one proxy with push params, bob's credentials."""
    path.write_text(
        f"""[sip]
sip_port=-1
sip_tcp_port={free_port()}
sip_tls_port=-1
default_proxy=0

[rtp]
audio_rtp_port=-1
video_rtp_port=-1

[proxy_0]
reg_proxy=<sip:127.0.0.1:{server_port};transport=tcp>
reg_identity={AOR}
reg_expires=3600
reg_sendregister=1
publish=0
contact_uri_parameters={PUSH_PARAMS}

[auth_info_0]
username=bob
passwd={PASSWORD}
realm=example.org
domain=example.org
"""
    )
    return path


@contextmanager
def linphonec(rc: Path, home: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run linphonec in its own process group; SIGKILL the group on the way out."""
    (home / ".local" / "share" / "linphone").mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        process = subprocess.Popen(
            [need("linphonec"), "-c", str(rc), "-d", "0"],
            stdin=subprocess.PIPE,  # kept open: linphonec spins once its stdin closes
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "HOME": str(home)},
            start_new_session=True,
        )
    try:
        yield process
    finally:
        # SIGKILL, like a phone's OS killing the app: the binding stays (a sleeping phone).
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        assert process.stdin is not None
        process.stdin.close()
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # nothing of the group is left


def wait_registered(server: SipushdProcess, timeout: float = 15.0) -> None:
    """Wait for the daemon's "registered" log event for bob."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "registered" and event.get("aor") == AOR:
                    return
        time.sleep(0.1)
    raise AssertionError(f"linphonec did not register:\n{server.log()[-3000:]}")


def wait_instance_id(rc: Path, timeout: float = 15.0) -> str:
    """The `[misc] uuid` linphonec writes into its RC (it saves the file a moment after start)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parser = configparser.ConfigParser(interpolation=None, strict=False)
        parser.read(rc)
        if uuid := parser.get("misc", "uuid", fallback=""):
            return uuid
        time.sleep(0.1)
    raise AssertionError(f"linphonec wrote no [misc] uuid into {rc}")


def read_bindings(db: Path) -> list[Binding]:
    async def read() -> list[Binding]:
        store = await SqliteBindingStore.open(db)  # a second connection; the daemon uses WAL
        try:
            return await store.get(AOR, time.time())
        finally:
            await store.close()

    return asyncio.run(read())


def register_statuses(admin: str) -> dict[str, float]:
    """REGISTER final responses by status, from the daemon's /metrics."""
    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("sipushd_register_results_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('status="')[1].split('"')[0]] = float(value)
    return counts


@pytest.mark.linphone
@pytest.mark.e2e
def test_linphone_registers_over_tcp_with_digest_and_push_params(tmp_path: Path) -> None:
    need("linphonec")
    users = tmp_path / "users.yaml"
    set_user(users, "example.org", "bob", PASSWORD)
    admin = f"127.0.0.1:{free_port()}"
    server = start_sipushd(
        tmp_path,
        {
            "auth": {"enabled": True, "realm": "example.org", "users_file": str(users)},
            "push": {"mock": {"enabled": True}},
            "admin": {"listen": admin},
        },
    )
    try:
        rc = write_rc(tmp_path / "linphonerc", server.port)
        with linphonec(rc, tmp_path / "home", tmp_path / "linphonec.log"):
            wait_registered(server)
            uuid = wait_instance_id(rc)
            statuses = register_statuses(admin)
            shown = subprocess.run(
                [sys.executable, "-m", "sipushd", "bindings", "--config", str(server.config_path),
                 "bob@example.org", "--json"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            stored = read_bindings(tmp_path / "sipushd.db")
    finally:
        assert server.stop() == 0, server.log()[-3000:]

    # RFC 3261 §22: challenged first, then accepted with bob's password.
    assert statuses.get("401", 0) >= 1 and statuses.get("200", 0) >= 1, statuses
    instance = f"<urn:uuid:{uuid}>"  # the instance id linphonec keeps in its RC

    [binding] = stored
    assert binding.instance == instance
    assert binding.flow.transport == "tcp"
    assert binding.push is not None
    assert (binding.push.provider, binding.push.sandbox) == ("apns", True)
    assert (binding.push.app_id, binding.push.team_id) == ("org.example.app", "ABCD1234")
    assert binding.push.voip_token == "VOIPTOKEN"
    assert binding.push.remote_token == "REMOTETOKEN"
    assert (binding.user_agent or "").startswith("Linphone")

    assert shown.returncode == 0, shown.stderr
    assert "VOIPTOKEN" not in shown.stdout and "REMOTETOKEN" not in shown.stdout
    [view] = json.loads(shown.stdout)[AOR]
    assert view["instance"] == instance
    assert view["push"]["app_id"] == "org.example.app"
    assert [service for service, _ in view["push"]["tokens"]] == ["voip", "remote"]
