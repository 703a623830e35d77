"""Child processes in tests and benchmarks (sipushd, sipp, redis-server): stopping them."""

from __future__ import annotations

import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], grace: float) -> int:
    """SIGTERM, then SIGKILL when it has not exited after `grace` seconds; its exit status."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
