"""A real Linphone is woken by a push and takes the call (RFC 8599 push-and-hold, end to end).

`sipushd run` pushes through its APNs provider to `sipushd mock-pns`, whose `--on-push`
command restarts linphonec with the same RC (so the same +sip.instance registers). The
phone was SIGKILLed first, like iOS killing a backgrounded app: its binding stays.
The caller's INVITE is held, forked to the new registration, auto-answered (`-a`), and the
dialog's ACK and BYE reach the phone through sipushd's Record-Route.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipushd.testing.mock_pns import write_test_apns_key
from sipushd.testing.net import free_port, wait_until
from sipushd.testing.ua import SipClient
from tests.e2e.conftest import SipushdProcess, need, start_sipushd
from tests.integration.proxy_helpers import in_dialog, invite

TEAM, BUNDLE, KEY_ID = "ABCD1234", "org.example.app", "KEY1234567"
PUSH_PARAMS = (
    f"pn-provider=apns.dev;pn-param={TEAM}.{BUNDLE}.voip&remote;"
    "pn-prid=00aa11bb22cc:voip&33dd44ee55ff:remote"
)

START_SCRIPT = """#!/bin/sh
# Start linphonec in its own session; its process group id goes to linphone.pgid.
cd "{dir}"
setsid sh -c 'echo $$ > "{dir}/linphone.pgid"; sleep 120 | HOME="{dir}/home" \\
  exec linphonec -c "{dir}/linphonerc" -a -d 0 >> "{dir}/linphone.log" 2>&1' \\
  < /dev/null > /dev/null 2>&1 &
"""


def _write_rc(path: Path, sip_port: int, phone_port: int) -> None:
    path.write_text(
        "[sip]\nsip_port=-1\n"
        f"sip_tcp_port={phone_port}\nsip_tls_port=-1\ndefault_proxy=0\n"
        "[proxy_0]\n"
        f"reg_proxy=<sip:127.0.0.1:{sip_port};transport=tcp>\n"
        "reg_identity=sip:bob@example.org\nreg_expires=3600\nreg_sendregister=1\n"
        f"publish=0\ncontact_uri_parameters={PUSH_PARAMS}\n"
    )


def _kill_group(pgid_file: Path) -> None:
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.killpg(int(pgid_file.read_text().strip()), signal.SIGKILL)


@pytest.fixture
def mock_pns(tmp_path: Path) -> Iterator[tuple[str, str, subprocess.Popen[str]]]:
    script = tmp_path / "start-linphone.sh"
    script.write_text(START_SCRIPT.format(dir=tmp_path))
    script.chmod(0o755)
    process = subprocess.Popen(
        [
            sys.executable, "-m", "sipushd", "mock-pns",
            "--listen", f"127.0.0.1:{free_port()}",
            "--state-dir", str(tmp_path / "pns"),
            "--on-push", str(script),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("mock-pns listening on"), line
        url, ca = line.split()[3], line.split("ca=")[1].strip()
        yield url, ca, process
    finally:
        process.terminate()
        process.wait(10)
        if process.stdout is not None:
            process.stdout.close()
        _kill_group(tmp_path / "linphone.pgid")


def _registrations(sipushd: SipushdProcess) -> int:
    return sipushd.log().count('"event": "registered"')


async def _call(port: int) -> tuple[int, int]:
    """INVITE bob, ACK the 2xx, hang up; (INVITE final status, BYE final status)."""
    alice = await SipClient.connect("udp", ("127.0.0.1", port))
    try:
        call = invite(alice)
        alice.send(call)
        ok = await alice.final_response(timeout=20)
        if ok.status != 200:
            return ok.status, 0
        alice.send(in_dialog(alice, call, ok, "ACK"))
        await asyncio.sleep(0.5)
        alice.send(in_dialog(alice, call, ok, "BYE", cseq=call.cseq.seq + 1))
        bye = await alice.final_response(timeout=10)
        return ok.status, bye.status
    finally:
        await alice.close()


@pytest.mark.linphone
@pytest.mark.e2e
def test_killed_linphone_is_woken_by_push_and_answers(
    tmp_path: Path, mock_pns: tuple[str, str, subprocess.Popen[str]]
) -> None:
    need("linphonec")
    url, ca, _ = mock_pns
    key = write_test_apns_key(tmp_path / f"AuthKey_{KEY_ID}.p8")
    (tmp_path / "home" / ".local" / "share" / "linphone").mkdir(parents=True)
    apns = {"team_id": TEAM, "bundle_id": BUNDLE, "key_file": str(key), "key_id": KEY_ID}
    sipushd = start_sipushd(
        tmp_path,
        {
            "push": {"apns": [{**apns, "endpoint": url, "ca_file": ca}]},
            "routing": {"call_timeout": 20},
        },
    )
    try:
        _write_rc(tmp_path / "linphonerc", sipushd.port, free_port())
        subprocess.run([str(tmp_path / "start-linphone.sh")], check=True, timeout=10)
        registered = wait_until(lambda: _registrations(sipushd) >= 1, 10)
        assert registered, "timed out waiting for linphonec to register"
        # Sleep: SIGKILL keeps the binding, as iOS does when it kills the app.
        _kill_group(tmp_path / "linphone.pgid")
        time.sleep(0.3)
        invite_status, bye_status = asyncio.run(_call(sipushd.port))
        log = sipushd.log()
        assert invite_status == 200, log[-3000:]
        assert bye_status == 200
        assert '"event": "wake-up"' in log
        assert '"push": "registered"' in log
        assert '"answered": 200' in log
    finally:
        _kill_group(tmp_path / "linphone.pgid")
        assert sipushd.stop() == 0
