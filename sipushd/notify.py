"""The systemd notify protocol (sd_notify(3)) without extra dependencies.

Messages are newline-separated `KEY=VALUE` lines sent as one AF_UNIX
datagram to `$NOTIFY_SOCKET` (a path, or `@name` for the abstract
namespace). Without the variable every call is a no-op, so the daemon runs
the same under systemd, in a terminal and in tests. Sending never raises:
a lost notification must not take the daemon down; the bool result says
whether it was sent.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

__all__ = [
    "notify",
    "ready",
    "reloading",
    "status",
    "stopping",
    "watchdog",
    "watchdog_interval",
]

_SEND_TIMEOUT = 1.0


def _address(value: str) -> str | None:
    if value.startswith("@"):
        return "\0" + value[1:]  # Linux abstract socket namespace
    if value.startswith("/"):
        return value
    return None  # vsock: and other forms are not used by sipushd deployments


def notify(state: str, env: Mapping[str, str] | None = None) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET; False if unset or not delivered."""
    target = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.connect(address)
            sock.sendall(state.encode("utf-8"))
    except OSError:
        return False
    return True


def ready(status_text: str | None = None) -> bool:
    """Startup (or a reload) finished: `READY=1`."""
    return notify("READY=1" + (f"\nSTATUS={status_text}" if status_text else ""))


def reloading() -> bool:
    """A reload started; systemd 253+ wants MONOTONIC_USEC with it. Send ready() when done."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify(f"RELOADING=1\nMONOTONIC_USEC={usec}")


def stopping() -> bool:
    """Shutdown started: `STOPPING=1`."""
    return notify("STOPPING=1")


def status(text: str) -> bool:
    """Free-form status shown by `systemctl status`."""
    return notify(f"STATUS={text}")


def watchdog() -> bool:
    """Keep-alive ping for WatchdogSec=: `WATCHDOG=1`."""
    return notify("WATCHDOG=1")


def watchdog_interval(env: Mapping[str, str] | None = None) -> float | None:
    """Seconds between watchdog pings (half of WATCHDOG_USEC), or None if not asked for us."""
    values = os.environ if env is None else env
    try:
        usec = int(values.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = values.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None  # meant for another process (e.g. our parent)
        except ValueError:
            return None
    return usec / 2 / 1_000_000
