"""The shipped systemd unit: verified by systemd-analyze and hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "sipushd.service"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (Debian package systemd)"
)
MAX_EXPOSURE = 2.0


def service_section() -> dict[str, list[str]]:
    """[Service] settings; repeated keys (SystemCallFilter=) keep every value."""
    values: dict[str, list[str]] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
        elif section == "Service":
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_has_the_required_settings() -> None:
    service = service_section()
    expected = {
        "Type": "notify",
        "ExecStart": "/usr/bin/sipushd run --config /etc/sipushd/sipushd.yaml",
        "ExecReload": "/bin/kill -HUP $MAINPID",
        "WatchdogSec": "30",
        "DynamicUser": "yes",
        "StateDirectory": "sipushd",
        "ConfigurationDirectory": "sipushd",
        "AmbientCapabilities": "CAP_NET_BIND_SERVICE",
        "CapabilityBoundingSet": "CAP_NET_BIND_SERVICE",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallArchitectures": "native",
        "MemoryDenyWriteExecute": "yes",
        "UMask": "0077",
        "Restart": "on-failure",
    }
    for key, value in expected.items():
        assert service.get(key, [None])[0] == value, key
    assert "@system-service" in service["SystemCallFilter"]
    assert "LimitNOFILE" in service
    for flag in [
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectKernelLogs",
        "ProtectControlGroups",
        "ProtectClock",
        "ProtectHostname",
        "RestrictNamespaces",
        "RestrictRealtime",
        "RestrictSUIDSGID",
        "LockPersonality",
    ]:
        assert service.get(flag) == ["yes"], flag


def runnable_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointed at this interpreter (verify checks the binary exists)."""
    text = UNIT.read_text()
    text, count = re.subn(
        r"^ExecStart=/usr/bin/sipushd ", f"ExecStart={sys.executable} -m sipushd ", text, flags=re.M
    )
    assert count == 1
    copy = tmp_path / UNIT.name
    copy.write_text(text)
    return copy


@needs_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", str(runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # verify prints only problems; anything about our unit is a failure.
    complaints = [line for line in result.stderr.splitlines() if UNIT.name in line]
    assert result.returncode == 0 and not complaints, result.stderr


@needs_analyze
def test_systemd_analyze_security_exposure(tmp_path: Path) -> None:
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", "--no-pager", str(runnable_copy(tmp_path))],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    print(f"systemd-analyze security exposure: {exposure}")
    assert exposure <= MAX_EXPOSURE
