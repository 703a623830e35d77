"""sipp calls through a running `sipushd run`: INVITE, 180, 200, ACK and BYE via Record-Route."""

from __future__ import annotations

import signal
import socket
import subprocess
from pathlib import Path

import pytest

from sipushd.testing.net import free_port
from tests.e2e.conftest import SCENARIOS, SipushdProcess, need


def _register(server_port: int, callee_port: int) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        port = sock.getsockname()[1]
        sock.sendto(
            (
                "REGISTER sip:example.org SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bKe2ereg;rport\r\n"
                "Max-Forwards: 70\r\nFrom: <sip:callee@example.org>;tag=r1\r\n"
                "To: <sip:callee@example.org>\r\nCall-ID: e2e-register\r\nCSeq: 1 REGISTER\r\n"
                f"Contact: <sip:callee@127.0.0.1:{callee_port}>\r\nExpires: 600\r\n"
                "Content-Length: 0\r\n\r\n"
            ).encode(),
            ("127.0.0.1", server_port),
        )
        return sock.recv(65536).decode(errors="replace").split("\r\n", 1)[0]


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
        assert _register(sipushd.port, uas_port) == "SIP/2.0 200 OK"
        result = subprocess.run(
            [sipp, f"127.0.0.1:{sipushd.port}", "-sf", str(SCENARIOS / "sipp-uac-call.xml"),
             "-s", "callee", "-m", "20", "-r", "20", "-p", str(free_port()), "-i", "127.0.0.1",
             "-timeout", "20", "-nostdin", "-trace_stat", "-stf", str(tmp_path / "calls.csv")],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
        )  # fmt: skip
    finally:
        uas.send_signal(signal.SIGTERM)
        try:
            uas.wait(5)
        except subprocess.TimeoutExpired:
            uas.kill()
            uas.wait()
    assert result.returncode == 0, result.stdout[-2000:] + sipushd.log()[-2000:]
    header, *rows = (tmp_path / "calls.csv").read_text().splitlines()
    columns = dict(zip(header.split(";"), rows[-1].split(";"), strict=False))
    assert columns["SuccessfulCall(C)"] == "20"
    assert columns["FailedCall(C)"] == "0"
