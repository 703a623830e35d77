"""A private `redis-server` for tests: started in a temporary directory, stopped after.

`RedisServer(directory).start()` runs one on a free loopback port; `stop()` ends it.
`shared_url()` starts one per test session on first use (the contract suites key
each test by its own prefix); `stop_shared()` ends it. Without `redis-server` the
test is skipped, unless `CI` is set: there a missing server is a failure.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from sipushd.testing.net import free_port
from sipushd.testing.process import stop_process

__all__ = ["RedisServer", "require_redis_server", "shared_url", "stop_shared"]


def require_redis_server() -> str:
    """The path of `redis-server`; skip the test (fail under CI) when it is missing."""
    found = shutil.which("redis-server")
    if found is None:
        reason = "redis-server is not installed (Debian package redis-server)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    return found


class RedisServer:
    """One redis-server process bound to 127.0.0.1, its files in `directory`."""

    def __init__(self, directory: Path, *, appendonly: bool = False) -> None:
        self.directory = directory
        self.appendonly = appendonly
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The `redis://` URL of the server."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start the server (on the same port as before when restarted) and wait for it."""
        binary = require_redis_server()
        self.port = self.port or free_port()
        args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--dir", str(self.directory), "--daemonize", "no", "--loglevel", "warning"]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        log = (self.directory / "redis.log").open("ab")
        with log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_ready()
        return self

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        process, self.process = self.process, None
        if process is None:
            return
        stop_process(process, 10)

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")
                raise RuntimeError(f"redis-server exited: {log}")
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock,
            ):
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not answer PING")


_shared: RedisServer | None = None


def shared_url() -> str:
    """The URL of the session's shared server, started on first use."""
    global _shared
    if _shared is None:
        directory = Path(tempfile.mkdtemp(prefix="sipushd-redis-"))
        _shared = RedisServer(directory).start()
        atexit.register(stop_shared)  # in case the session fixture never ran
    return _shared.url


def stop_shared() -> None:
    """Stop the shared server if it was started."""
    global _shared
    server, _shared = _shared, None
    if server is not None:
        server.stop()
        shutil.rmtree(server.directory, ignore_errors=True)
