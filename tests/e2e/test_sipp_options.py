"""sipp, a real SIP peer, pings a running `sipushd run` with OPTIONS over UDP and TCP."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from sipushd.testing.net import free_port
from tests.e2e.conftest import SCENARIOS, SipushdProcess, need


@pytest.mark.sipp
@pytest.mark.e2e
@pytest.mark.parametrize("transport", ["u1", "t1"])
def test_sipp_options_scenario_succeeds(
    sipushd: SipushdProcess, tmp_path: Path, transport: str
) -> None:
    sipp = need("sipp")
    result = subprocess.run(
        [
            sipp, f"127.0.0.1:{sipushd.port}",
            "-sf", str(SCENARIOS / "options.xml"),
            "-t", transport, "-p", str(free_port()),
            "-m", "20", "-r", "50", "-timeout", "20", "-nostdin",
            "-trace_stat", "-stf", str(tmp_path / "stats.csv"),
        ],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    header, *rows = (tmp_path / "stats.csv").read_text().splitlines()
    columns = dict(zip(header.split(";"), rows[-1].split(";"), strict=False))
    assert columns["SuccessfulCall(C)"] == "20"
    assert columns["FailedCall(C)"] == "0"
