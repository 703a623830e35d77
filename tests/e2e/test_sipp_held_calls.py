"""sipp calls through `sipushd run` to sleeping and forked phones (RFC 8599 §5.6, RFC 3261 §16).

The caller is always sipp. A phone is sipp too: it REGISTERs with push parameters (answering
a digest challenge with `[authentication]`) and exits, which leaves a sleeping binding; to
take a held call it REGISTERs again and gets the INVITE. sipp matches every message to a
call by Call-ID, so a phone that registers and then takes a call uses the caller's Call-ID
(`-cid_str`) for its REGISTERs. Forked devices are sipp UAS instances registered by the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from sipushd.testing.mock_pns import write_test_apns_key
from sipushd.testing.net import free_port, wait_until
from sipushd.testing.process import stop_process
from sipushd.testing.ua import SipClient
from sipushd.users import set_user
from tests.e2e.conftest import SCENARIOS, SipushdProcess, need, start_sipushd

AOR = "sip:bob@example.org"
TEAM, BUNDLE, KEY_ID = "ABCD1234", "org.example.app", "KEY1234567"
ALERT_PARAMS = f"pn-provider=apns;pn-param={TEAM}.{BUNDLE};pn-prid=44ee55ff"
VOIP_PARAMS = f"pn-provider=apns.dev;pn-param={TEAM}.{BUNDLE}.voip;pn-prid=00aa11bb"
SIPP_TIMEOUT = 15  # seconds: sipp's own -timeout, so no run can hang the suite
MOCK_PUSH: dict[str, object] = {"push": {"mock": {"enabled": True}}}
INSTANCE = "00000000-0000-0000-0000-0000000000e2"  # the sleeping phone's +sip.instance


class Sipp:
    """One sipp process against sipushd, with its statistics and message trace in tmp_path."""

    def __init__(self, tmp_path: Path, name: str, server_port: int, args: Sequence[str]) -> None:
        self.name = name
        self.stats = tmp_path / f"{name}-stats.csv"
        self.messages = tmp_path / f"{name}-messages.log"
        self.errors = tmp_path / f"{name}-errors.log"
        self.output = tmp_path / f"{name}-stderr.log"
        command = [
            need("sipp"), f"127.0.0.1:{server_port}", "-i", "127.0.0.1", "-m", "1",
            "-timeout", str(SIPP_TIMEOUT), "-nostdin",
            "-trace_stat", "-stf", str(self.stats),
            "-trace_msg", "-message_file", str(self.messages),
            "-trace_err", "-error_file", str(self.errors),
            *args,
        ]  # fmt: skip
        if "-p" not in args:
            command += ["-p", str(free_port())]
        with self.output.open("wb") as output:
            self.process = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, stderr=output, cwd=tmp_path
            )

    def wait(self) -> int:
        """Its exit status (0: every call succeeded); killed if it outlives its -timeout."""
        try:
            self.process.wait(SIPP_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            stop_process(self.process, 1)
        return self.process.returncode

    def stop(self) -> None:
        stop_process(self.process, 2)

    def counters(self) -> dict[str, str]:
        """The last row of sipp's statistics file, by column."""
        header, *rows = self.stats.read_text().splitlines()
        return dict(zip(header.split(";"), rows[-1].split(";"), strict=False))

    def report(self) -> str:
        """What went wrong, for assertion messages."""
        parts = [f"--- sipp {self.name} exit {self.process.returncode}"]
        for path in (self.output, self.errors, self.messages):
            if path.exists():
                parts.append(path.read_text(errors="replace")[-3000:])
        return "\n".join(parts)

    def received(self, start_line: str) -> int:
        """How many received messages start with `start_line` (e.g. "INVITE ")."""
        count = 0
        for block in self.messages.read_text(errors="replace").split("message received")[1:]:
            lines = [line for line in block.splitlines()[1:] if line.strip()]
            if lines and lines[0].startswith(start_line):
                count += 1
        return count


@contextlib.contextmanager
def running(tmp_path: Path, overrides: dict[str, object]) -> Iterator[SipushdProcess]:
    server = start_sipushd(tmp_path, overrides)
    try:
        yield server
    finally:
        assert server.stop() == 0, server.log()[-3000:]


@contextlib.contextmanager
def sipp(tmp_path: Path, name: str, server: SipushdProcess, *args: str) -> Iterator[Sipp]:
    """A sipp run that is always stopped."""
    peer = Sipp(tmp_path, name, server.port, args)
    try:
        yield peer
    finally:
        peer.stop()


def phone_registers(tmp_path: Path, server: SipushdProcess, pn: str, *auth: str) -> None:
    """The phone (sipp) registers its push binding and exits: its app is asleep."""
    with sipp(
        tmp_path, "register", server, "-sf", str(SCENARIOS / "held-phone-register.xml"),
        "-s", "bob", "-key", "pn", pn, "-key", "instance", INSTANCE, *auth,
    ) as phone:  # fmt: skip
        assert phone.wait() == 0, phone.report() + server.log()[-2000:]


def log_events(server: SipushdProcess, name: str) -> list[dict[str, Any]]:
    """The daemon's JSON log lines for event `name`."""
    found = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("event") == name:
                found.append(event)
    return found


def pushed(server: SipushdProcess, call_id: str) -> bool:
    """The in-process mock provider logged a push for `call_id`."""
    return any(e.get("call_id") == call_id for e in log_events(server, "push recorded"))


# --- 1. CANCEL while held ---------------------------------------------------------------


@pytest.fixture
def mock_pns(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`sipushd mock-pns` as a child process: (its base URL, its CA file)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sipushd", "mock-pns", "--listen", f"127.0.0.1:{free_port()}",
         "--state-dir", str(tmp_path / "pns")],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("mock-pns listening on"), line
        yield line.split()[3], line.split("ca=")[1].strip()
    finally:
        stop_process(process, 5)
        if process.stdout is not None:
            process.stdout.close()


def pushes_since(url: str, ca: str, since: int, wait: float = 10) -> list[dict[str, Any]]:
    """GET /pushes of mock-pns: pushes with index >= since, waiting up to `wait` s for one."""
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(
        f"{url}/pushes?since={since}&wait={wait}", context=context, timeout=wait + 5
    ) as answer:
        pushes: list[dict[str, Any]] = json.load(answer)["pushes"]
    return pushes


@pytest.mark.sipp
@pytest.mark.e2e
def test_cancel_while_held_gives_487_and_a_missed_call_push(
    tmp_path: Path, mock_pns: tuple[str, str]
) -> None:
    url, ca = mock_pns
    key = write_test_apns_key(tmp_path / f"AuthKey_{KEY_ID}.p8")
    apns = {"team_id": TEAM, "bundle_id": BUNDLE, "key_file": str(key), "key_id": KEY_ID}
    overrides: dict[str, object] = {
        "push": {"apns": [{**apns, "endpoint": url, "ca_file": ca}]},
        "routing": {"call_timeout": 20},
    }
    with running(tmp_path, overrides) as server:
        phone_registers(tmp_path, server, ALERT_PARAMS)
        with sipp(
            tmp_path, "caller", server, "-sf", str(SCENARIOS / "held-caller-cancel.xml"),
            "-s", "bob",
        ) as caller:  # fmt: skip
            assert caller.wait() == 0, caller.report() + server.log()[-3000:]
        first, *later = pushes_since(url, ca, 0)
        assert first["token"] == "44ee55ff"
        assert first["payload"]["aps"]["alert"]["loc-key"] == "IC_MSG"
        later = later or pushes_since(url, ca, first["index"] + 1)
        assert later, "no missed-call push after the CANCEL"
        missed = later[0]
        assert missed["token"] == "44ee55ff"
        assert missed["headers"]["apns-push-type"] == "alert"
        assert missed["payload"]["aps"]["alert"]["loc-key"] == "IC_MISSED"


# --- 2. routing.call_timeout --------------------------------------------------------------


@pytest.mark.sipp
@pytest.mark.e2e
def test_phone_that_never_wakes_gives_480_after_call_timeout(tmp_path: Path) -> None:
    overrides: dict[str, object] = {**MOCK_PUSH, "routing": {"call_timeout": 1}}
    with running(tmp_path, overrides) as server:
        phone_registers(tmp_path, server, VOIP_PARAMS)
        call_id = f"timeout-{free_port()}@sipp"
        with sipp(
            tmp_path, "caller", server, "-sf", str(SCENARIOS / "held-caller-timeout.xml"),
            "-s", "bob", "-cid_str", call_id,
        ) as caller:  # fmt: skip
            assert caller.wait() == 0, caller.report() + server.log()[-3000:]
        assert pushed(server, call_id), server.log()[-3000:]


# --- 3. a challenged REGISTER does not fork the held INVITE -------------------------------


def auth_overrides(tmp_path: Path) -> dict[str, object]:
    """Digest auth on (MD5: sipp's [authentication] has no SHA-256) for bob and alice."""
    users = tmp_path / "users.yaml"
    for user in ("bob", "alice"):
        set_user(users, "example.org", user, "secret")
    auth = {"enabled": True, "realm": "example.org", "users_file": str(users)}
    return {**MOCK_PUSH, "auth": {**auth, "algorithms": ["MD5"]}, "routing": {"call_timeout": 15}}


@pytest.mark.sipp
@pytest.mark.e2e
def test_woken_phone_answering_a_401_gets_the_held_invite_exactly_once(tmp_path: Path) -> None:
    with running(tmp_path, auth_overrides(tmp_path)) as server:
        phone_registers(tmp_path, server, VOIP_PARAMS, "-au", "bob", "-ap", "secret")
        call_id = f"held-{free_port()}@sipp"
        with sipp(
            tmp_path, "caller", server, "-sf", str(SCENARIOS / "held-caller-auth.xml"),
            "-s", "bob", "-au", "alice", "-ap", "secret", "-cid_str", call_id,
        ) as caller:  # fmt: skip
            held = wait_until(
                lambda: pushed(server, call_id) or caller.process.poll() is not None, 10
            )
            assert held and pushed(server, call_id), caller.report() + server.log()[-3000:]
            with sipp(
                tmp_path, "phone", server, "-sf", str(SCENARIOS / "held-phone-wake.xml"),
                "-s", "bob", "-key", "pn", VOIP_PARAMS, "-key", "instance", INSTANCE,
                "-au", "bob", "-ap", "secret", "-cid_str", call_id,
            ) as phone:  # fmt: skip
                assert phone.wait() == 0, phone.report() + server.log()[-3000:]
            assert caller.wait() == 0, caller.report() + server.log()[-3000:]
        stats = phone.counters()
        assert (stats["SuccessfulCall(C)"], stats["FailedCall(C)"]) == ("1", "0")
        assert stats["FailedUnexpectedMessage(C)"] == "0"
        assert phone.received("SIP/2.0 401 ") == 1
        assert phone.received("INVITE ") == 1, phone.report()


# --- 4. forking: one device answers, the other gets CANCEL with a Reason --------------------


async def register_device(server_port: int, device_port: int, uuid: int) -> int:
    """REGISTER a sipp UAS's Contact with its own +sip.instance (RFC 5626 §4.1); the status."""
    async with await SipClient.connect("udp", ("127.0.0.1", server_port)) as ua:
        contact = (
            f"<sip:bob@127.0.0.1:{device_port}>"
            f';+sip.instance="<urn:uuid:00000000-0000-0000-0000-{uuid:012d}>"'
        )
        headers = [("Contact", contact), ("Expires", "600")]
        ua.send(ua.build("REGISTER", "sip:example.org", headers, to=AOR, from_=AOR))
        return (await ua.final_response()).status


@contextlib.contextmanager
def device(tmp_path: Path, server: SipushdProcess, scenario: str, uuid: int) -> Iterator[Sipp]:
    """A sipp UAS running `scenario`, listening and registered as one of bob's devices."""
    port = free_port()
    args = ("-sf", str(SCENARIOS / scenario), "-p", str(port))
    with sipp(tmp_path, scenario.removesuffix(".xml"), server, *args) as uas:
        assert wait_until(lambda: bound(port), 10), uas.report()
        assert asyncio.run(register_device(server.port, port, uuid)) == 200
        yield uas


def bound(port: int) -> bool:
    """True once some process (sipp) has bound UDP 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


@pytest.mark.sipp
@pytest.mark.e2e
def test_two_devices_ring_one_answers_the_other_gets_cancel_completed_elsewhere(
    tmp_path: Path,
) -> None:
    with running(tmp_path, {}) as server, contextlib.ExitStack() as stack:
        answering = stack.enter_context(device(tmp_path, server, "sipp-uas.xml", 1))
        ringing = stack.enter_context(device(tmp_path, server, "fork-uas-cancelled.xml", 2))
        with sipp(
            tmp_path, "caller", server, "-sf", str(SCENARIOS / "sipp-uac-call.xml"), "-s", "bob"
        ) as caller:  # fmt: skip
            assert caller.wait() == 0, caller.report() + server.log()[-3000:]
        assert answering.wait() == 0, answering.report() + server.log()[-3000:]
        assert ringing.wait() == 0, ringing.report() + server.log()[-3000:]
        assert ringing.received("CANCEL ") == 1
        assert ringing.counters()["FailedUnexpectedMessage(C)"] == "0"
