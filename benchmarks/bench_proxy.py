"""Proxy throughput with an online callee: sipp calls through sipushd, then through Kamailio.

Run: .venv/bin/python benchmarks/bench_proxy.py [--calls N] [--rate R] [--limit L]
A sipp UAS (../shared/peers/sipp-uas.xml) registers as sip:callee@example.org; a sipp
UAC (sipp-uac-call.xml) places N calls (INVITE, 180, 200, ACK and BYE along the
Record-Route) at up to R calls/s with at most L open. The same load then runs against
Kamailio (kamailio-registrar.cfg, port 5080) when it is installed. Prints calls/s,
failures and the ratio sipushd / Kamailio; no thresholds (these machines are noisy).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PEERS = Path(__file__).resolve().parent.parent.parent / "shared" / "peers"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sipushd.testing.net import free_port, register_contact  # noqa: E402
from sipushd.testing.process import stop_process  # noqa: E402


def run_calls(server_port: int, work: Path, args: argparse.Namespace, name: str) -> dict[str, str]:
    """Start the UAS, register it, run the UAC; the UAC's last statistics row."""
    sipp = shutil.which("sipp")
    assert sipp is not None
    uas_port = free_port()
    uas = subprocess.Popen(
        [sipp, "-sf", str(PEERS / "sipp-uas.xml"), "-p", str(uas_port), "-nostdin",
         "-i", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work,
    )  # fmt: skip
    try:
        time.sleep(0.5)
        contact = f"sip:callee@127.0.0.1:{uas_port}"
        status = register_contact(server_port, "callee", contact, expires=3600)
        print(f"{name}: register -> {status}")
        stats = work / f"{name}-calls.csv"
        subprocess.run(
            [sipp, f"127.0.0.1:{server_port}", "-sf", str(PEERS / "sipp-uac-call.xml"),
             "-s", "callee", "-r", str(args.rate), "-l", str(args.limit), "-m", str(args.calls),
             "-p", str(free_port()), "-i", "127.0.0.1", "-nostdin", "-timeout", "120",
             "-trace_stat", "-stf", str(stats)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work, timeout=180,
            check=False,
        )  # fmt: skip
        header, *rows = stats.read_text().splitlines()
        return dict(zip(header.split(";"), rows[-1].split(";"), strict=False))
    finally:
        stop_process(uas, 5)


def rate(row: dict[str, str]) -> float:
    """Successful calls per second over the run."""
    elapsed = row.get("ElapsedTime(C)", "00:00:01:000000")
    h, m, s = elapsed.split(":")[:3]
    seconds = int(h) * 3600 + int(m) * 60 + float(s.replace(":", "."))
    parts = elapsed.split(":")
    if len(parts) == 4:
        seconds = int(parts[0]) * 3600 + int(parts[1]) * 60 + int(parts[2]) + int(parts[3]) / 1e6
    return int(row["SuccessfulCall(C)"]) / max(seconds, 1e-6)


def bench_sipushd(work: Path, args: argparse.Namespace) -> float:
    """Calls/s through `sipushd run` (uvloop, SQLite store in memory)."""
    port = free_port()
    config = work / "sipushd.yaml"
    config.write_text(
        "sip:\n  domains: [example.org]\n"
        f"  listen: ['udp:127.0.0.1:{port}']\n"
        "storage: {sqlite: {path: ':memory:'}}\n"
        f"admin: {{listen: '127.0.0.1:{free_port()}'}}\n"
        "logging: {format: json, level: warning}\n"
    )
    log = (work / "sipushd.log").open("wb")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "sipushd", "run", "--config", str(config)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        time.sleep(2.0)
        row = run_calls(port, work, args, "sipushd")
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
        log.close()
    calls = rate(row)
    print(
        f"sipushd: {calls:,.0f} calls/s, successful {row['SuccessfulCall(C)']}, "
        f"failed {row['FailedCall(C)']}, retransmissions {row.get('Retransmissions(C)', '?')}"
    )
    return calls


def bench_kamailio(work: Path, args: argparse.Namespace) -> float | None:
    """Calls/s through Kamailio with the peer config (port 5080), or None without it."""
    kamailio = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(kamailio).exists():
        print("kamailio: not installed, skipped")
        return None
    pid_file = work / "kamailio.pid"
    subprocess.run(
        [kamailio, "-f", str(PEERS / "kamailio-registrar.cfg"), "-P", str(pid_file),
         "-m", "256", "-M", "32"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True, timeout=20,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        row = run_calls(5080, work, args, "kamailio")
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        time.sleep(1.0)
    calls = rate(row)
    print(
        f"kamailio: {calls:,.0f} calls/s, successful {row['SuccessfulCall(C)']}, "
        f"failed {row['FailedCall(C)']}"
    )
    return calls


def main() -> int:
    """Run both and print the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=100)
    args = parser.parse_args()
    if shutil.which("sipp") is None:
        print("sipp is not installed (Debian package sip-tester): skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        work = Path(tmp)
        ours = bench_sipushd(work, args)
        theirs = bench_kamailio(work, args)
        if theirs:
            print(f"ratio sipushd / kamailio: {ours / theirs:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
