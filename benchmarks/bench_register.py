"""REGISTER throughput with RFC 8599 push params: sipushd next to Kamailio and a bare responder.

The load from ../shared/peers/README.md, run against each server in turn in one run:

    sipp 127.0.0.1:PORT -sf sipp-register-pn.xml -inf users.csv
         -r 30000 -l 500 -m 30000 -nostdin -trace_stat -stf stats.csv

- Kamailio: peers/kamailio-registrar.cfg (in-memory usrloc, one UDP worker, port 5080);
- sipushd: `sipushd run` with its SQLite store in a temporary directory, auth off, the
  mock push provider on (so `pn-provider=apns` is accepted), UDP on a free port, logging
  at warning;
- bare: peers/bare_responder.py on uvloop, the ceiling of a Python asyncio SIP server.

users.csv (SEQUENTIAL, `user;voiptoken;remotetoken;uuid`) is generated in the temporary
directory: every REGISTER creates a new binding. Rate = SuccessfulCall(C) / (CurrentTime -
StartTime) from sipp's final statistics line. Absolute rates vary between runs on a shared
machine; the ratios within one run are the figures to compare. Exit status 1 when a
REGISTER did not get its 200 or a server did not start.

    .venv/bin/python benchmarks/bench_register.py [--count 30000] [--rate 30000]
        [--limit 500] [--rounds 1] [--only sipushd,kamailio,bare] [--py-spy OUT.svg] [--pin]

`--pin` runs each server with every one of its processes and threads on CPU 1 and sipp on
CPU 0 (taskset): one core each, as the issue's "ratio on one core" reads. Without it the
scheduler places them, and Kamailio's several processes share both cores with sipp.

Peers are looked up in ../shared/peers next to the repository, else in $SIPUSHD_PEERS.
`--py-spy` records a flame graph of sipushd during its run (needs py-spy on PATH or in
the venv; it is not a dependency of sipushd).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sipushd.testing.net import free_port  # noqa: E402
from sipushd.testing.process import stop_process  # noqa: E402

KAMAILIO_PORT = 5080  # fixed in kamailio-registrar.cfg
SERVER_CPU, LOAD_CPU = 1, 0  # --pin: the server under test on one core, sipp on the other
SERVERS = ("kamailio", "sipushd", "bare")


@dataclass(frozen=True)
class Result:
    """One sipp run against one server."""

    server: str
    successful: int
    failed: int
    retransmissions: int
    elapsed: float
    peak_rss_mb: float | None = None  # the server's VmHWM after the run (sipushd only)

    @property
    def rate(self) -> float:
        """Successful REGISTERs per second."""
        return self.successful / self.elapsed if self.elapsed > 0 else 0.0


class BenchError(Exception):
    """A server or sipp could not run; the message says why."""


def peers_dir() -> Path:
    """../shared/peers next to the repository, else $SIPUSHD_PEERS."""
    candidate = REPO.parent / "shared" / "peers"
    if (candidate / "sipp-register-pn.xml").is_file():
        return candidate
    env = os.environ.get("SIPUSHD_PEERS")
    if env and (Path(env) / "sipp-register-pn.xml").is_file():
        return Path(env)
    raise BenchError(f"no peers in {candidate} and SIPUSHD_PEERS is not set to a peers dir")


def write_users(path: Path, count: int) -> None:
    """sipp injection file: SEQUENTIAL, then `user;voiptoken;remotetoken;uuid` per line."""
    lines = ["SEQUENTIAL"]
    for n in range(count):
        voip, remote = secrets.token_hex(32), secrets.token_hex(32)
        lines.append(f"bench{n:06d};{voip};{remote};{uuid.uuid4()}")
    path.write_text("\n".join(lines) + "\n")


def port_in_use(port: int) -> bool:
    """True when something already listens on UDP 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        try:
            udp.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def wait_answering(port: int, alive: Callable[[], bool], timeout: float = 20.0) -> None:
    """Send OPTIONS until the server at `port` answers anything (RFC 3261 §11)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        probe.settimeout(0.2)
        local = probe.getsockname()[1]
        n = 0
        while time.monotonic() < deadline:
            if not alive():
                raise BenchError(f"the server on port {port} exited while starting")
            n += 1
            probe.sendto(_options(port, local, n), ("127.0.0.1", port))
            with contextlib.suppress(TimeoutError):
                if probe.recv(65536).startswith(b"SIP/2.0 "):
                    return
    raise BenchError(f"nothing answers OPTIONS on 127.0.0.1:{port}")


def _options(port: int, local: int, n: int) -> bytes:
    return (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK-probe-{n}-{secrets.token_hex(4)}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:probe@127.0.0.1>;tag=probe{n}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: probe-{n}-{secrets.token_hex(4)}\r\n"
        f"CSeq: {n} OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


@contextlib.contextmanager
def kamailio(peers: Path, work: Path, pin: list[str]) -> Iterator[int]:
    """Kamailio on 127.0.0.1:5080 (it forks into the background; stopped by its pid file)."""
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    if not Path(binary).exists():
        raise BenchError("kamailio is not installed (Debian package kamailio)")
    if port_in_use(KAMAILIO_PORT):
        raise BenchError(f"port {KAMAILIO_PORT} is taken: is another Kamailio running?")
    pid_file = work / "kamailio.pid"
    log = (work / "kamailio.log").open("wb")
    command = [binary, "-f", str(peers / "kamailio-registrar.cfg"), "-P", str(pid_file)]
    status = subprocess.run([*pin, *command, "-m", "256", "-M", "32"], stdout=log, stderr=log)
    if status.returncode != 0:
        raise BenchError(f"kamailio did not start (see {work / 'kamailio.log'})")
    pid = 0
    try:
        deadline = time.monotonic() + 10
        while not pid and time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
            time.sleep(0.05)
        if not pid:
            raise BenchError("kamailio wrote no pid file")
        wait_answering(KAMAILIO_PORT, lambda: _alive(pid))
        yield KAMAILIO_PORT
    finally:
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
        log.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def sipushd(work: Path, pin: list[str]) -> Iterator[tuple[int, int]]:
    """`sipushd run` on a free UDP port with a fresh SQLite store: (port, pid)."""
    port = free_port()
    config = work / "sipushd.yaml"
    for name in ("sipushd.db", "sipushd.db-wal", "sipushd.db-shm"):
        (work / name).unlink(missing_ok=True)  # every round starts with an empty store
    config.write_text(
        "sip:\n"
        "  domains: [example.org, 127.0.0.1]\n"  # sipp's Request-URI is sip:127.0.0.1:PORT
        f'  listen: ["udp:127.0.0.1:{port}"]\n'
        f"storage:\n  sqlite: {{path: {work / 'sipushd.db'}}}\n"
        "auth: {enabled: false}\n"
        "push:\n  mock: {enabled: true}\n"
        f'admin: {{listen: "127.0.0.1:{free_port()}"}}\n'
        "logging: {format: json, level: warning}\n"
    )
    with (work / "sipushd.log").open("wb") as log:
        process = subprocess.Popen(
            [*pin, sys.executable, "-m", "sipushd", "run", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    try:
        wait_answering(port, lambda: process.poll() is None)
        yield port, process.pid
    finally:
        stop_process(process, 15)


@contextlib.contextmanager
def bare(peers: Path, work: Path, pin: list[str]) -> Iterator[int]:
    """peers/bare_responder.py on uvloop on a free port."""
    port = free_port()
    with (work / "bare.log").open("wb") as log:
        process = subprocess.Popen(
            [*pin, sys.executable, str(peers / "bare_responder.py"), str(port), "uvloop"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_answering(port, lambda: process.poll() is None)
        yield port
    finally:
        stop_process(process, 15)


def run_sipp(
    server: str, port: int, peers: Path, users: Path, work: Path, args: argparse.Namespace
) -> Result:
    """The README's sipp load against 127.0.0.1:`port`; the totals of its last stats line."""
    stats = work / f"stats-{server}.csv"
    stats.unlink(missing_ok=True)
    command = [
        *pinned(args, LOAD_CPU), shutil.which("sipp") or "sipp", f"127.0.0.1:{port}",
        "-sf", str(peers / "sipp-register-pn.xml"), "-inf", str(users),
        "-r", str(args.rate), "-l", str(args.limit), "-m", str(args.count),
        "-p", str(free_port()), "-timeout", str(args.timeout),
        "-nostdin", "-trace_stat", "-stf", str(stats),
    ]  # fmt: skip
    with (work / f"sipp-{server}.log").open("wb") as log:
        subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=work, check=False)
    if not stats.is_file():
        raise BenchError(f"sipp wrote no statistics for {server} (see {work}/sipp-{server}.log)")
    return parse_stats(server, stats)


def parse_stats(server: str, path: Path) -> Result:
    """Totals from the last line of a sipp `-trace_stat` file."""
    header, *rows = path.read_text().splitlines()
    if not rows:
        raise BenchError(f"sipp statistics for {server} are empty")
    values = dict(zip(header.split(";"), rows[-1].split(";"), strict=False))

    def epoch(column: str) -> float:
        # "2026-11-22\t11:24:38.169923\t1795346678.169923": date, time, epoch seconds
        return float(values[column].split("\t")[-1])

    return Result(
        server=server,
        successful=int(values["SuccessfulCall(C)"]),
        failed=int(values["FailedCall(C)"]),
        retransmissions=int(values["Retransmissions(C)"]),
        elapsed=epoch("CurrentTime") - epoch("StartTime"),
    )


@contextlib.contextmanager
def py_spy(pid: int | None, out: Path | None) -> Iterator[None]:
    """Record a flame graph of `pid` while the block runs (no-op without `out`)."""
    if out is None or pid is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(binary).exists():
        raise BenchError("--py-spy needs py-spy (pip install py-spy into the venv)")
    fmt = "speedscope" if out.suffix == ".json" else "raw" if out.suffix == ".txt" else "flamegraph"
    recorder = subprocess.Popen(
        [binary, "record", "-p", str(pid), "-o", str(out), "-f", fmt, "-r", "200", "--gil"]
    )
    try:
        yield
    finally:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)


def pinned(args: argparse.Namespace, cpu: int) -> list[str]:
    """`taskset -c CPU` to put in front of a command with --pin, else nothing."""
    return ["taskset", "-c", str(cpu)] if args.pin else []


def run_round(name: str, peers: Path, users: Path, work: Path, args: argparse.Namespace) -> Result:
    """Start one server, load it with sipp, stop it."""
    if name == "kamailio":
        with kamailio(peers, work, pinned(args, SERVER_CPU)) as port:
            return run_sipp(name, port, peers, users, work, args)
    if name == "sipushd":
        with sipushd(work, pinned(args, SERVER_CPU)) as (port, pid), py_spy(pid, args.py_spy):
            result = run_sipp(name, port, peers, users, work, args)
            return dataclasses.replace(result, peak_rss_mb=peak_rss_mb(pid))
    with bare(peers, work, pinned(args, SERVER_CPU)) as port:
        return run_sipp(name, port, peers, users, work, args)


def peak_rss_mb(pid: int) -> float | None:
    """The process's peak resident set size (VmHWM in /proc), in MB; None if unreadable."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def report(results: dict[str, list[Result]], args: argparse.Namespace) -> bool:
    """Print the table and ratios; True when every REGISTER got its 200."""
    print(
        f"\nREGISTER with push params: sipp -r {args.rate} -l {args.limit} -m {args.count}, "
        f"{args.rounds} round(s); median rate per server"
    )
    print(f"{'server':<10} {'REGISTER/s':>11} {'ok':>8} {'failed':>7} {'retrans':>8} {'time s':>7}")
    rates: dict[str, float] = {}
    clean = True
    for name, runs in results.items():
        rates[name] = statistics.median(r.rate for r in runs)
        failed = sum(r.failed for r in runs)
        clean &= failed == 0 and all(r.successful == args.count for r in runs)
        for run in runs:
            print(
                f"{name:<10} {run.rate:>11,.0f} {run.successful:>8} {run.failed:>7} "
                f"{run.retransmissions:>8} {run.elapsed:>7.2f}"
            )
    print()
    for name, rate in rates.items():
        print(f"median {name:<10} {rate:>9,.0f}/s")
    peaks = [r.peak_rss_mb for r in results.get("sipushd", []) if r.peak_rss_mb is not None]
    if peaks:
        print(f"sipushd peak RSS {max(peaks):.0f} MB over {args.count:,} REGISTERs")
    if "sipushd" in rates:
        for peer in ("kamailio", "bare"):
            if rates.get(peer):
                print(f"ratio sipushd/{peer:<9} {rates['sipushd'] / rates[peer]:.2f}")
    print("every REGISTER answered 200: " + ("yes" if clean else "NO"))
    return clean


def main() -> int:
    """Run the benchmark; exit 1 on failed REGISTERs or a server that would not start."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=30000, help="REGISTERs per run (-m)")
    parser.add_argument("--rate", type=int, default=30000, help="sipp call rate (-r)")
    parser.add_argument("--limit", type=int, default=500, help="outstanding REGISTERs (-l)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per server, interleaved")
    parser.add_argument("--timeout", type=int, default=300, help="sipp -timeout, seconds")
    parser.add_argument("--only", default=",".join(SERVERS), help="servers, comma-separated")
    parser.add_argument("--py-spy", type=Path, default=None, help="flame graph of sipushd")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--pin",
        action="store_true",
        help=f"each server alone on CPU {SERVER_CPU} (every process of it), sipp on CPU {LOAD_CPU}",
    )
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n]
    if unknown := set(names) - set(SERVERS):
        parser.error(f"unknown server(s): {', '.join(sorted(unknown))}")
    if shutil.which("sipp") is None:
        print("bench_register: sipp is not installed (Debian package sip-tester)", file=sys.stderr)
        return 1
    work = Path(tempfile.mkdtemp(prefix="sipushd-bench-register-"))
    try:
        peers = peers_dir()
        users = work / "users.csv"
        write_users(users, args.count)
        results: dict[str, list[Result]] = {name: [] for name in names}
        for _ in range(args.rounds):
            for name in names:
                results[name].append(run_round(name, peers, users, work, args))
        return 0 if report(results, args) else 1
    except BenchError as exc:
        print(f"bench_register: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"work directory: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
