"""sipp calls through a running `sipushd run`: INVITE, 180, 200, ACK and BYE via Record-Route."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sipushd.testing.net import free_port, register_contact
from sipushd.testing.process import stop_process
from tests.e2e.conftest import SCENARIOS, SipushdProcess, need


@pytest.mark.sipp
@pytest.mark.e2e
def test_sipp_calls_pass_through_the_proxy(sipushd: SipushdProcess, tmp_path: Path) -> None:
    sipp = need("sipp")
    uas_port = free_port()
    uas = subprocess.Popen(
        [sipp, "-sf", str(SCENARIOS / "sipp-uas.xml"), "-p", str(uas_port), "-i", "127.0.0.1",
         "-nostdin"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp_path,
    )  # fmt: skip
    try:
        contact = f"sip:callee@127.0.0.1:{uas_port}"
        assert register_contact(sipushd.port, "callee", contact) == "SIP/2.0 200 OK"
        result = subprocess.run(
            [sipp, f"127.0.0.1:{sipushd.port}", "-sf", str(SCENARIOS / "sipp-uac-call.xml"),
             "-s", "callee", "-m", "20", "-r", "20", "-p", str(free_port()), "-i", "127.0.0.1",
             "-timeout", "20", "-nostdin", "-trace_stat", "-stf", str(tmp_path / "calls.csv")],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    finally:
        stop_process(uas, 5)
    assert result.returncode == 0, result.stdout[-2000:] + sipushd.log()[-2000:]
    header, *rows = (tmp_path / "calls.csv").read_text().splitlines()
    columns = dict(zip(header.split(";"), rows[-1].split(";"), strict=False))
    assert columns["SuccessfulCall(C)"] == "20"
    assert columns["FailedCall(C)"] == "0"
