"""Push throughput and latency: the dispatcher and real providers against the mock push service.

The mock push service runs in its own process (`sipushd mock-pns`), the
dispatcher with the APNs (aioapns, token auth) and FCM (HTTP v1) providers in
this one. For each provider:

1. throughput: COUNT pushes submitted as fast as the queue takes them;
   pushes/s = answers / elapsed time;
2. latency: pushes submitted at half that rate, and at --latency-rate (1,000/s,
   half the 2,000/s target), for DURATION seconds each (open loop);
   enqueue-to-answer p50 / p99, timed with perf_counter.

This process applies the daemon's GC settings (app.tune_gc), as `sipushd run` does.

    .venv/bin/python benchmarks/bench_push.py [--count 5000] [--duration 5] [--uvloop]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import structlog

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sipushd.app import tune_gc  # noqa: E402
from sipushd.core.payload import PushKind, PushRequest, PushService  # noqa: E402
from sipushd.push.apns import ApnsProvider  # noqa: E402
from sipushd.push.base import PushProvider, PushResult  # noqa: E402
from sipushd.push.dispatcher import Dispatcher  # noqa: E402
from sipushd.push.fcm import FcmProvider  # noqa: E402
from sipushd.push.settings import (  # noqa: E402
    ApnsAppSettings,
    DispatcherSettings,
    FcmAppSettings,
)
from sipushd.testing.mock_pns import write_test_apns_key, write_test_service_account  # noqa: E402

BUNDLE, TEAM, KEY_ID, PROJECT = "org.example.bench", "BENCHTEAM1", "BENCHKEY01", "bench-project"


def start_mock(state: Path, key: Path) -> tuple[subprocess.Popen[str], str]:
    """Run `sipushd mock-pns` on a free port; its process and base URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sipushd", "mock-pns", "--listen", "127.0.0.1:0", "--quiet",
         "--state-dir", str(state), "--apns-key-file", str(key), "--max-records", "1000"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        proc.kill()
        raise SystemExit(f"mock-pns did not start: {line!r}")
    return proc, match.group(1)


def apns_settings(base_url: str, ca: Path, key: Path, connections: int) -> ApnsAppSettings:
    """Token auth against the mock, trusting its CA."""
    return ApnsAppSettings(
        TEAM, BUNDLE, key_file=key, key_id=KEY_ID, endpoint=base_url, ca_file=ca,
        max_connections=connections,
    )  # fmt: skip


def request(provider: str, index: int, ttl: float = 60.0) -> PushRequest:
    """A distinct call push (no two share a Call-ID, so none are de-duplicated)."""
    return PushRequest(
        kind=PushKind.CALL,
        provider=provider,
        token=f"{index:064x}",
        app_id=BUNDLE if provider == "apns" else PROJECT,
        team_id=TEAM,
        deadline=time.time() + ttl,
        service=PushService.VOIP,
        caller_uri="sip:alice@example.org",
        caller_display="Alice",
        call_id=f"bench-{provider}-{index}-{time.monotonic_ns()}",
        instance="<urn:uuid:00000000-0000-0000-0000-000000000001>",
    )


async def throughput(dispatcher: Dispatcher, provider: str, count: int) -> float:
    """Pushes per second with the queue kept full (half of max_queue waiting at most).

    A semaphore holds the window: asyncio.wait over thousands of pending futures on
    every completion cost this process about as much CPU as the pushes themselves.
    """
    window = asyncio.Semaphore(dispatcher.settings.max_queue // 2)
    futures: list[asyncio.Future[PushResult]] = []
    started = time.perf_counter()
    for index in range(count):
        await window.acquire()
        future = dispatcher.submit(request(provider, index))
        future.add_done_callback(lambda _: window.release())
        futures.append(future)
    results = await asyncio.gather(*futures)
    failed = sum(not r.delivered for r in results)
    elapsed = time.perf_counter() - started
    if failed:
        print(f"  warning: {failed} of {count} pushes not delivered")
    return count / elapsed


async def latency(
    dispatcher: Dispatcher, provider: str, rate: float, duration: float
) -> list[float]:
    """Enqueue-to-answer latencies (s) of pushes sent at `rate` per second for `duration` s.

    Timed with perf_counter: the loop clock moves in 1 ms steps on uvloop.
    """
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[PushResult]] = []
    latencies: list[float] = []

    def answered(future: asyncio.Future[PushResult], sent: float) -> None:
        if not future.cancelled() and future.result().delivered:
            latencies.append(time.perf_counter() - sent)

    start = loop.time()
    total = int(rate * duration)
    for index in range(total):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        future = dispatcher.submit(request(provider, 10_000_000 + index))
        future.add_done_callback(partial(answered, sent=time.perf_counter()))
        futures.append(future)
    await asyncio.gather(*futures)
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def bench(args: argparse.Namespace, base_url: str, ca: Path, key: Path, sa: Path) -> None:
    providers: dict[str, PushProvider] = {
        "apns": ApnsProvider([apns_settings(base_url, ca, key, args.connections)]),
        "fcm": FcmProvider([FcmAppSettings(PROJECT, sa, endpoint=base_url, ca_file=ca)]),
    }
    settings = DispatcherSettings(max_queue=args.queue, concurrency=args.concurrency)
    dispatcher = Dispatcher(providers, settings)
    await dispatcher.start()
    try:
        for name in args.providers:
            await throughput(dispatcher, name, min(500, args.count))  # warm up connections
            rate = await throughput(dispatcher, name, args.count)
            print(f"{name}: {rate:8.0f} pushes/s (concurrency {args.concurrency})")
            for load in sorted({rate / 2, args.latency_rate}):
                lat = await latency(dispatcher, name, load, args.duration)
                print(
                    f"  at {load:.0f}/s: p50 {percentile(lat, 0.5) * 1000:.1f} ms, "
                    f"p99 {percentile(lat, 0.99) * 1000:.1f} ms, "
                    f"mean {statistics.fmean(lat) * 1000:.1f} ms over {len(lat)} pushes"
                )
    finally:
        await dispatcher.stop()
    stats = dispatcher.stats
    print(f"dispatcher: delivered {stats.delivered}, failed {dict(stats.failed_by_reason)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5000, help="pushes per throughput run")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of latency run")
    parser.add_argument(
        "--latency-rate", type=float, default=1000.0, help="second latency run (half of 2,000/s)"
    )
    parser.add_argument("--concurrency", type=int, default=100, help="per-provider limit")
    parser.add_argument("--connections", type=int, default=4, help="APNs connections per app")
    parser.add_argument("--queue", type=int, default=10_000, help="dispatcher max_queue")
    parser.add_argument("--providers", nargs="+", default=["apns", "fcm"])
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop like the daemon")
    args = parser.parse_args()
    # Per-push log lines are debug level: keep them out of the measurement, as the daemon does.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory(prefix="bench-push-") as tmp:
        work = Path(tmp)
        key = write_test_apns_key(work / "AuthKey.p8")
        proc, base_url = start_mock(work / "pns", key)
        try:
            sa = write_test_service_account(work / "sa.json", f"{base_url}/token", PROJECT)
            runner = bench(args, base_url, work / "pns" / "ca.pem", key, sa)
            tune_gc()  # the daemon's GC settings (sipushd run)
            if args.uvloop:
                import uvloop

                uvloop.run(runner)
            else:
                asyncio.run(runner)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    own = resource.getrusage(resource.RUSAGE_SELF)
    mock = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(
        f"CPU seconds: dispatcher+providers {own.ru_utime + own.ru_stime:.1f}, "
        f"mock-pns {mock.ru_utime + mock.ru_stime:.1f} (on {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
