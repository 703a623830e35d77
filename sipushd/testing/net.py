"""Loopback helpers for tests and benchmarks: free ports, polling, a one-shot REGISTER."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A port free for both UDP and TCP on `host` (SIP listens on both, RFC 3261 §18)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return port


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05) -> bool:
    """Poll `predicate` every `interval` s until true (True) or `timeout` s pass (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def register_contact(
    server_port: int,
    user: str,
    contact: str,
    *,
    domain: str = "example.org",
    expires: int = 600,
    timeout: float = 5.0,
) -> str:
    """REGISTER `contact` for sip:user@domain over UDP (RFC 3261 §10.2); the final status line.

    Sent from a fresh socket on LOOPBACK, so it can register another UA's Contact (a sipp UAS).
    """
    aor = f"sip:{user}@{domain}"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        sock.settimeout(timeout)
        port = sock.getsockname()[1]
        message = (
            f"REGISTER sip:{domain} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{port};branch=z9hG4bK{secrets.token_hex(8)};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <{aor}>;tag={secrets.token_hex(4)}\r\nTo: <{aor}>\r\n"
            f"Call-ID: {secrets.token_hex(8)}\r\nCSeq: 1 REGISTER\r\n"
            f"Contact: <{contact}>\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(message.encode(), (LOOPBACK, server_port))
        while True:
            line = sock.recv(65536).decode(errors="replace").split("\r\n", 1)[0]
            if not line.startswith("SIP/2.0 1"):
                return line
