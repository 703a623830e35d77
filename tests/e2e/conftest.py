"""End-to-end fixtures: `sipushd run` as a real process, and the Debian peers it talks to."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sipushd.testing.net import free_port, wait_until
from sipushd.testing.process import stop_process

SCENARIOS = Path(__file__).parent / "scenarios"


@dataclass
class SipushdProcess:
    """A `sipushd run` child process and where it listens."""

    process: subprocess.Popen[bytes]
    port: int
    config_path: Path
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process, 15)


def start_sipushd(tmp_path: Path, overrides: dict[str, object] | None = None) -> SipushdProcess:
    """Write a config for loopback, start `sipushd run`, wait until it is ready."""
    port = free_port()
    config: dict[str, object] = {
        "sip": {
            "domains": ["example.org"],
            "listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
        },
        "storage": {"sqlite": {"path": str(tmp_path / "sipushd.db")}},
        "admin": {"listen": f"127.0.0.1:{free_port()}"},
        "logging": {"format": "json", "level": "debug"},
    }
    for key, value in (overrides or {}).items():
        section = config.setdefault(key, {})
        if isinstance(section, dict) and isinstance(value, dict):
            section.update(value)
        else:
            config[key] = value
    config_path = tmp_path / f"sipushd-{port}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / f"sipushd-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "sipushd", "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    child = SipushdProcess(process, port, config_path, log_path)
    wait_until(lambda: "sipushd ready" in child.log() or process.poll() is not None, 20)
    if "sipushd ready" not in child.log():
        child.stop()
        raise RuntimeError(f"sipushd did not start:\n{child.log()}")
    return child


@pytest.fixture
def sipushd(tmp_path: Path) -> Iterator[SipushdProcess]:
    child = start_sipushd(tmp_path)
    yield child
    assert child.stop() == 0, child.log()


def need(binary: str) -> str:
    """Path of a Debian tool the test drives; skip when it is not installed."""
    path = shutil.which(binary)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{binary} is missing: `make test` installs it")
        pytest.skip(f"{binary} is not installed")
    return path
