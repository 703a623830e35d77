"""systemd notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sipushd import notify


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    with tempfile.TemporaryDirectory(prefix="sd") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        with sock:
            yield sock


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_stopping_watchdog_status(listener: socket.socket) -> None:
    assert notify.ready("serving 3 listeners")
    assert receive(listener) == "READY=1\nSTATUS=serving 3 listeners"
    assert notify.ready()
    assert receive(listener) == "READY=1"
    assert notify.watchdog()
    assert receive(listener) == "WATCHDOG=1"
    assert notify.status("draining")
    assert receive(listener) == "STATUS=draining"
    assert notify.stopping()
    assert receive(listener) == "STOPPING=1"


def test_reloading_carries_monotonic_usec(listener: socket.socket) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert notify.reloading()
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = receive(listener).split("\n")
    assert first == "RELOADING=1"
    key, value = second.split("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"sipushd-test-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify.ready()
        assert receive(sock) == "READY=1"


def test_no_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert notify.ready() is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": ""}) is False


def test_unreachable_socket_does_not_raise() -> None:
    env = {"NOTIFY_SOCKET": "/nonexistent/sipushd/notify"}
    assert notify.notify("READY=1", env=env) is False
    assert notify.notify("READY=1", env={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    pid = str(os.getpid())
    assert notify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": pid}) == 15.0


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"WATCHDOG_USEC": "0"},
        {"WATCHDOG_USEC": "soon"},
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)},  # not us
        {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"},
    ],
)
def test_no_watchdog_interval(env: dict[str, str]) -> None:
    assert notify.watchdog_interval(env) is None


def test_watchdog_interval_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert notify.watchdog_interval() == 1.0
