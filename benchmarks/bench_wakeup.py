"""Wake-up latency of push-and-hold (RFC 8599 §5.6.2): sleeping phones called at a steady rate.

    .venv/bin/python benchmarks/bench_wakeup.py [--rate 50] [--duration 20] [--runs 2]
        [--transport tcp|udp] [--phones N] [--warmup 10] [--keep DIR] [--no-pin]

Processes (all on 127.0.0.1, started and killed by this script):
- `sipushd mock-pns`, the APNs stand-in, recording each push with its arrival time;
- `sipushd run` (uvloop, SQLite in memory, JSON log at info) with one APNs app (token
  auth, test .p8 key) whose endpoint is the mock and whose ca_file is the mock's ca.pem;
- phones (this script, `_phones`): registers N phones (push params + +sip.instance), each
  from its own socket which is then closed (asleep); then long-polls the mock's
  `GET /pushes?wait=` and, per VoIP push, REGISTERs that phone again from a fresh socket
  (same instance), answers the INVITE 200, the ACK and the BYE, and closes the socket;
- caller (this script, `_caller`): one UDP socket, INVITEs phone k at `rate` calls/s,
  ACKs the 2xx along the Record-Route and hangs up with a BYE.

Measured on the wire with one clock (time.time(), CLOCK_REALTIME, same machine):
- (a) INVITE -> push: caller's send time of the INVITE -> the mock's record time of the
  push carrying that call_id (so it includes the mock's own TLS and HTTP/2 read);
- (b) REGISTER -> INVITE: phone's send time of the wake-up REGISTER -> the kernel's
  receive timestamp (SO_TIMESTAMPNS) of the INVITE on the phone's new socket, so the
  phone process's own scheduling delay is not counted.
sipushd's wake-up log line (runtime/held.py) only has times relative to the push
submission, taken from loop.time() (1 ms steps on uvloop), so it cannot give either
figure; its registered -> forwarded step (binding stored -> INVITE forked) is printed
next to (b) as a cross-check. Calls start once sipushd is idle after the registrations;
the first `--warmup` calls (TLS and HTTP/2 set-up, JWT signing) are left out. The issue's
target is p99 under 5 ms for both on one core: sipushd runs alone on CPU 1 and every other
process on CPU 0 (--no-pin lets the scheduler place them); no thresholds here, figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sipushd.sip import (  # noqa: E402
    Request,
    Response,
    StreamParser,
    make_response,
    parse_message,
    parse_uri,
)
from sipushd.sip.headers import Headers  # noqa: E402
from sipushd.testing.net import free_port, wait_until  # noqa: E402
from sipushd.testing.process import stop_process  # noqa: E402

TEAM, BUNDLE, KEY_ID = "ABCD1234", "org.example.bench", "BENCHKEY01"
HOST = "127.0.0.1"
CALL_TIMEOUT = 10.0
# Linux SO_TIMESTAMPNS (asm-generic/socket.h); Python 3.11 does not name it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
PR_SET_PDEATHSIG = 1  # linux/prctl.h

# --- shared helpers ---------------------------------------------------------------------


def voip_token(phone: int) -> str:
    """Phone `phone`'s APNs VoIP token (hex, as APNs requires)."""
    return f"{phone + 1:064x}"


def branch() -> str:
    """A fresh RFC 3261 §8.1.1.7 branch."""
    return "z9hG4bK" + secrets.token_hex(8)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of `values` (0 < q <= 100)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def install_loop_policy() -> None:
    """uvloop when available: keeps the load processes light."""
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cpu_used() -> float:
    """This process's user + system CPU seconds so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def write_records(path: str, records: list[dict[str, Any]], since: float = 0.0) -> None:
    """Write this load process's records and its CPU time (after `since`) as JSON."""
    text = json.dumps({"records": records, "cpu": cpu_used() - since})
    await asyncio.to_thread(Path(path).write_text, text)


# --- phones -------------------------------------------------------------------------------


class Flow:
    """One phone socket (UDP or TCP) read with kernel receive timestamps."""

    def __init__(self, sock: socket.socket, server: tuple[str, int]) -> None:
        self.sock = sock
        self.server = server
        self.udp = sock.type == socket.SOCK_DGRAM
        self.parser = StreamParser()
        self.inbox: asyncio.Queue[tuple[float, Request | Response]] = asyncio.Queue()
        self.loop = asyncio.get_running_loop()
        self.local = sock.getsockname()[:2]

    @classmethod
    async def open(cls, transport: str, server: tuple[str, int]) -> Flow:
        """A fresh socket towards the server, reading with SO_TIMESTAMPNS."""
        kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
        sock = socket.socket(socket.AF_INET, kind)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        if transport == "udp":
            sock.bind((HOST, 0))
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.get_running_loop().sock_connect(sock, server)
        flow = cls(sock, server)
        flow.loop.add_reader(sock.fileno(), flow._readable)
        return flow

    def _readable(self) -> None:
        try:
            data, ancillary, _flags, _addr = self.sock.recvmsg(65536, 64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data, ancillary = b"", []
        stamp = time.time()
        for level, kind, raw in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                seconds, nanos = struct.unpack("qq", raw[:16])
                stamp = seconds + nanos / 1e9
        if not data and not self.udp:
            self.loop.remove_reader(self.sock.fileno())
            return
        if self.udp and not data.strip(b"\r\n"):
            return  # a keep-alive (RFC 5626 §4.4.2)
        messages = [parse_message(data)] if self.udp else self.parser.feed(data)
        for message in messages:
            self.inbox.put_nowait((stamp, message))

    def send(self, data: bytes) -> float:
        """Send one message; the time just before it left."""
        sent = time.time()
        if self.udp:
            self.sock.sendto(data, self.server)
        else:
            self.sock.send(data)
        return sent

    async def receive(self, timeout: float) -> tuple[float, Request | Response]:
        """The next message and its kernel receive time."""
        return await asyncio.wait_for(self.inbox.get(), timeout)

    def close(self) -> None:
        """Close the socket (the phone falls asleep)."""
        with contextlib.suppress(ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


def register_bytes(phone: int, flow: Flow, transport: str, cseq: int) -> bytes:
    """REGISTER with RFC 8599 push params (Linphone syntax) and a stable instance id."""
    host, port = flow.local
    user = f"phone{phone}"
    remote = "f" + f"{phone + 1:063x}"
    push = (
        f"pn-provider=apns.dev;pn-param={TEAM}.{BUNDLE}.voip&remote;"
        f"pn-prid={voip_token(phone)}:voip&{remote}:remote"
    )
    instance = f"<urn:uuid:00000000-0000-4000-8000-{phone:012x}>"
    return (
        f"REGISTER sip:example.org SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport.upper()} {host}:{port};branch={branch()};rport\r\n"
        f"Max-Forwards: 70\r\nFrom: <sip:{user}@example.org>;tag={secrets.token_hex(4)}\r\n"
        f"To: <sip:{user}@example.org>\r\nCall-ID: reg-{phone}-{secrets.token_hex(6)}\r\n"
        f"CSeq: {cseq} REGISTER\r\n"
        f"Contact: <sip:{user}@{host}:{port};transport={transport};{push}>"
        f';+sip.instance="{instance}"\r\n'
        "Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    ).encode()


async def register(phone: int, transport: str, server: tuple[str, int]) -> tuple[Flow, float]:
    """Open a fresh socket and REGISTER `phone` on it; the flow and the send time."""
    flow = await Flow.open(transport, server)
    sent = flow.send(register_bytes(phone, flow, transport, 1))
    while True:
        _, message = await flow.receive(5.0)
        if not isinstance(message, Response) or message.status < 200:
            continue
        if message.status != 200:
            raise RuntimeError(f"phone{phone}: REGISTER answered {message.status}")
        return flow, sent


def answer(flow: Flow, request: Request, status: int, tag: str) -> None:
    """Answer like a UAS: Record-Route copied and a Contact on the 2xx (§12.1.1)."""
    extra = [("Record-Route", v) for v in request.headers.get_all("Record-Route")]
    if request.method == "INVITE":
        host, port = flow.local
        extra.append(("Contact", f"<sip:{request.uri.user}@{host}:{port}>"))
    flow.send(make_response(request, status, to_tag=tag, headers=extra).to_bytes())


async def wake(phone: int, push: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Phone `phone` got `push`: REGISTER from a fresh socket, take the call, sleep again."""
    record: dict[str, Any] = {"phone": phone, "push_time": push["time"]}
    record["push_call_id"] = find_call_id(push.get("payload"))
    try:
        flow, record["register_sent"] = await register(phone, args.transport, (HOST, args.port))
    except (OSError, RuntimeError, TimeoutError) as exc:
        record["error"] = f"register: {exc!r}"
        return record
    tag = secrets.token_hex(4)
    try:
        async with asyncio.timeout(CALL_TIMEOUT):
            while True:
                stamp, message = await flow.receive(CALL_TIMEOUT)
                if not isinstance(message, Request):
                    continue
                if message.method == "INVITE":
                    record.setdefault("invite_received", stamp)
                    record["invite_call_id"] = message.call_id
                    answer(flow, message, 200, tag)
                elif message.method == "BYE":
                    answer(flow, message, 200, tag)
                    record["bye"] = True
                    break
    except TimeoutError:
        record["error"] = "no BYE"
    finally:
        flow.close()
    return record


def find_call_id(payload: Any) -> str | None:
    """The `call_id` field anywhere in a push payload."""
    if isinstance(payload, dict):
        if isinstance(payload.get("call_id"), str):
            return str(payload["call_id"])
        for value in payload.values():
            found = find_call_id(value)
            if found is not None:
                return found
    return None


async def phones_main(args: argparse.Namespace) -> None:
    """Register every phone, put it to sleep, then wake phones as their pushes arrive."""
    import ssl

    import httpx

    server = (HOST, args.port)
    gate = asyncio.Semaphore(50)

    async def first(phone: int) -> None:
        async with gate:
            flow, _ = await register(phone, args.transport, server)
            flow.close()  # asleep: the binding stays, the socket is gone

    await asyncio.gather(*(first(phone) for phone in range(args.phones)))
    tokens = {voip_token(phone): phone for phone in range(args.phones)}
    records: list[dict[str, Any]] = []
    tasks: set[asyncio.Task[dict[str, Any]]] = set()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    context = ssl.create_default_context(cafile=args.ca)

    def keep(task: asyncio.Task[dict[str, Any]]) -> None:
        if not task.cancelled():
            records.append(task.result())

    async with httpx.AsyncClient(http2=True, verify=context, timeout=30) as client:
        print("ready", flush=True)
        cpu_at_ready = cpu_used()  # the call phase only
        since = 0
        while not stop.is_set():
            poll = asyncio.ensure_future(
                client.get(f"{args.mock}/pushes", params={"since": since, "wait": 5})
            )
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({poll, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not poll.done():
                poll.cancel()
                break
            stopped.cancel()
            body = poll.result().json()
            since = body["next"]
            for push in body["pushes"]:
                phone = tokens.get(push["token"])
                if phone is None or push["status"] != 200:
                    continue
                task = asyncio.ensure_future(wake(phone, push, args))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                task.add_done_callback(keep)
    for task in list(tasks):
        task.cancel()  # calls still open at the end: not recorded
    await write_records(args.out, records, cpu_at_ready)


# --- caller -------------------------------------------------------------------------------


class Caller(asyncio.DatagramProtocol):
    """INVITE, ACK, BYE over one UDP socket; send times and outcomes per Call-ID."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None
        self.calls: dict[str, dict[str, Any]] = {}
        self.invites: dict[str, Request] = {}
        self.done = asyncio.Event()
        self.expected = 0
        self.hold = 0.05
        self.local = (HOST, 0)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        host, port = transport.get_extra_info("sockname")[:2]
        self.local = (str(host), int(port))

    def build(self, method: str, uri: str, call_id: str, cseq: int, **extra: str) -> Request:
        """A request from the caller (§8.1.1)."""
        host, port = self.local
        items = [
            ("Via", f"SIP/2.0/UDP {host}:{port};branch={extra.pop('branch', branch())};rport"),
            ("Max-Forwards", "70"),
            ("From", f"<sip:caller@example.net>;tag={call_id[:8]}"),
            ("To", extra.pop("to", f"<{uri}>")),
            ("Call-ID", call_id),
            ("CSeq", f"{cseq} {method}"),
            *[(name.replace("_", "-"), value) for name, value in extra.items()],
        ]
        return Request(method, parse_uri(uri), Headers(items))

    def invite(self, phone: int) -> None:
        """INVITE phone `phone`; record the send time."""
        call_id = f"call-{phone}-{secrets.token_hex(6)}"
        host, port = self.local
        request = self.build(
            "INVITE",
            f"sip:phone{phone}@example.org",
            call_id,
            1,
            Contact=f"<sip:caller@{host}:{port}>",
        )
        self.invites[call_id] = request
        data = request.to_bytes()
        assert self.transport is not None
        record: dict[str, Any] = {"phone": phone, "call_id": call_id}
        self.calls[call_id] = record
        record["invite_sent"] = time.time()
        self.transport.sendto(data, self.server)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if not data.strip():
            return
        message = parse_message(data)
        if not isinstance(message, Response):
            return
        record = self.calls.get(message.call_id)
        if record is None or message.status < 200:
            return
        invite = self.invites[message.call_id]
        if message.cseq.method == "INVITE" and "status" not in record:
            record["status"] = message.status
            record["answered"] = time.time()
            if message.status >= 300:
                # §17.1.1.3: ACK a non-2xx in the INVITE's transaction.
                self.send(self.ack_failure(invite, message))
                self.finish(record)
            else:
                self.send(self.in_dialog(invite, message, "ACK", 1))
                asyncio.get_running_loop().call_later(
                    self.hold, self.send, self.in_dialog(invite, message, "BYE", 2)
                )
        elif message.cseq.method == "BYE" and "bye" not in record:
            record["bye"] = message.status
            self.finish(record)

    def ack_failure(self, invite: Request, response: Response) -> Request:
        """The ACK for a non-2xx final response (same branch, To with the tag)."""
        return invite.replace(
            method="ACK",
            headers=Headers(
                [
                    ("Via", invite.headers.get("Via") or ""),
                    ("Max-Forwards", "70"),
                    ("From", invite.headers.get("From") or ""),
                    ("To", response.headers.get("To") or ""),
                    ("Call-ID", invite.call_id),
                    ("CSeq", f"{invite.cseq.seq} ACK"),
                ]
            ),
        )

    def in_dialog(self, invite: Request, ok: Response, method: str, cseq: int) -> Request:
        """ACK or BYE along the Record-Route to the 2xx's Contact (§12.2.1.1)."""
        routes = list(reversed(ok.headers.values("Record-Route")))
        extra = {"to": ok.headers.get("To") or ""}
        request = self.build(method, str(ok.contacts[0].uri), invite.call_id, cseq, **extra)
        headers = request.headers
        for route in routes:
            headers = headers.add("Route", route)
        return request.replace(headers=headers)

    def send(self, request: Request) -> None:
        """Send to sipushd."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(request.to_bytes(), self.server)

    def finish(self, record: dict[str, Any]) -> None:
        """One call over; set `done` when all are."""
        record["finished"] = True
        if sum(1 for r in self.calls.values() if r.get("finished")) >= self.expected:
            self.done.set()


async def caller_main(args: argparse.Namespace) -> None:
    """Place `calls` calls at `rate` calls/s, wait for them to end, write the records."""
    loop = asyncio.get_running_loop()
    transport, caller = await loop.create_datagram_endpoint(
        lambda: Caller((HOST, args.port)), local_addr=(HOST, 0)
    )
    caller.expected = args.calls
    caller.hold = args.hold
    start = loop.time() + 0.2
    for k in range(args.calls):
        delay = start + k / args.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        caller.invite(k % args.phones)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(caller.done.wait(), CALL_TIMEOUT + 5)
    transport.close()
    await write_records(args.out, list(caller.calls.values()))


# --- orchestration ------------------------------------------------------------------------


@contextlib.contextmanager
def child(
    command: list[str], log: Path | None = None, cpus: set[int] | None = None, **kwargs: Any
) -> Iterator[subprocess.Popen[str]]:
    """Run `command` (on `cpus` when given); always SIGTERM, then SIGKILL it on the way out."""

    def prepare() -> None:
        die_with_parent()
        if cpus:
            os.sched_setaffinity(0, cpus)

    out = log.open("w") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(
        command,
        stdout=kwargs.pop("stdout", out),
        stderr=out,
        cwd=REPO,
        text=True,
        preexec_fn=prepare,
        **kwargs,
    )
    try:
        yield process
    finally:
        stop_process(process, 15)
        if process.stdout is not None:
            process.stdout.close()
        if log is not None and not isinstance(out, int):
            out.close()


def die_with_parent() -> None:
    """In the child: SIGTERM it when this script dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU jiffies of the whole machine, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `predicate` until true; SystemExit after `timeout` s."""
    if not wait_until(predicate, timeout):
        raise SystemExit(f"timed out waiting for {what}")


def write_config(work: Path, port: int, url: str, ca: str) -> Path:
    """sipushd config: UDP and TCP on `port`, APNs pointed at the mock, JSON log at info."""
    from sipushd.testing.pki import write_test_apns_key

    key = write_test_apns_key(work / f"AuthKey_{KEY_ID}.p8")
    config = {
        "sip": {"domains": ["example.org"], "listen": [f"udp:{HOST}:{port}", f"tcp:{HOST}:{port}"]},
        "storage": {"sqlite": {"path": ":memory:"}},
        "admin": {"listen": f"{HOST}:{free_port()}"},
        "logging": {"format": "json", "level": "info"},
        "routing": {"call_timeout": CALL_TIMEOUT},
        "push": {
            "apns": [
                {
                    "team_id": TEAM,
                    "bundle_id": BUNDLE,
                    "key_file": str(key),
                    "key_id": KEY_ID,
                    "endpoint": url,
                    "ca_file": ca,
                }
            ]
        },
    }
    path = work / "sipushd.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(pid: int, timeout: float = 30.0) -> float:
    """Wait until process `pid` uses < 5% CPU over 0.5 s; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(0.5)
        if cpu_seconds(pid) - before < 0.025:
            break
    return time.monotonic() - started


def run_once(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One full run: mock, sipushd, phones, caller; the joined measurements."""
    script = str(Path(__file__).resolve())
    python = sys.executable
    port = free_port()
    mock_cmd = [python, "-m", "sipushd", "mock-pns", "--listen", f"{HOST}:0", "--quiet",
                "--state-dir", str(work / "pns"), "--max-records", "100000"]  # fmt: skip
    load, server = ({0}, {1}) if args.pin else (None, None)
    with child(mock_cmd, cpus=load, stdout=subprocess.PIPE) as mock:
        assert mock.stdout is not None
        line = mock.stdout.readline()
        found = re.search(r"listening on (\S+) ca=(\S+)", line)
        if found is None:
            raise SystemExit(f"mock-pns did not start: {line!r}")
        url, ca = found.groups()
        log = work / "sipushd.log"
        config = write_config(work, port, url, ca)
        run_cmd = [python, "-m", "sipushd", "run", "--config", str(config)]
        with child(run_cmd, log, cpus=server) as daemon:
            wait_for(lambda: "sipushd ready" in log.read_text(errors="replace"), "sipushd")
            common = ["--port", str(port), "--phones", str(args.phones)]
            phones_cmd = [python, script, "_phones", *common, "--transport", args.transport,
                          "--mock", url, "--ca", ca,
                          "--out", str(work / "phones.json")]  # fmt: skip
            with child(phones_cmd, work / "phones.log", load, stdout=subprocess.PIPE) as phones:
                assert phones.stdout is not None
                if phones.stdout.readline().strip() != "ready":
                    raise SystemExit(f"phones did not register: see {work / 'phones.log'}")
                # Call only once sipushd is done with the registrations.
                settled = settle(daemon.pid)
                calls = args.calls
                caller_cmd = [python, script, "_caller", *common, "--rate", str(args.rate),
                              "--calls", str(calls), "--hold", str(args.hold),
                              "--out", str(work / "caller.json")]  # fmt: skip
                cpu_before, busy_before = cpu_seconds(daemon.pid), machine_busy()
                started = time.monotonic()
                with child(caller_cmd, work / "caller.log", load) as caller:
                    caller.wait(calls / args.rate + CALL_TIMEOUT + 30)
                elapsed = time.monotonic() - started
                cpu = cpu_seconds(daemon.pid) - cpu_before
                busy_after = machine_busy()
                busy = (busy_after[0] - busy_before[0]) / (busy_after[1] - busy_before[1])
                time.sleep(0.5)
    return {**join(work, cpu, elapsed, args), "settled": settled, "busy": busy}


def join(work: Path, cpu: float, elapsed: float, args: argparse.Namespace) -> dict[str, Any]:
    """Join caller, phone and sipushd log records by Call-ID into the figures."""
    for name in ("caller", "phones"):
        if not (work / f"{name}.json").exists():
            raise SystemExit(f"the {name} process wrote no records: see {work / name}.log")
    caller = json.loads((work / "caller.json").read_text())
    phones = json.loads((work / "phones.json").read_text())
    calls, wakes = caller["records"], phones["records"]
    by_push = {w["push_call_id"]: w for w in wakes if w.get("push_call_id")}
    by_invite = {w["invite_call_id"]: w for w in wakes if w.get("invite_call_id")}
    measured = calls[args.warmup :]
    push_ms = [
        (by_push[c["call_id"]]["push_time"] - c["invite_sent"]) * 1000
        for c in measured
        if c["call_id"] in by_push
    ]
    wake_ms = [
        (w["invite_received"] - w["register_sent"]) * 1000
        for c in measured
        if (w := by_invite.get(c["call_id"])) is not None and "invite_received" in w
    ]
    wanted = {c["call_id"] for c in measured}
    # How late the caller sent each INVITE against its own schedule: a gauge of the
    # machine's noise (the caller is nearly idle, so its delays are someone else's CPU).
    ahead = [c["invite_sent"] - k / args.rate for k, c in enumerate(calls)]
    lag_ms = [(t - min(ahead)) * 1000 for t in ahead[args.warmup :]]
    story = []
    for line in (work / "sipushd.log").read_text(errors="replace").splitlines():
        if '"wake-up"' in line:
            fields = json.loads(line)
            if fields.get("call_id") in wanted and fields.get("forwarded_ms") is not None:
                story.append(fields["forwarded_ms"] - fields["registered_ms"])
    return {
        "calls": len(calls),
        "connected": sum(1 for c in calls if c.get("status") == 200),
        "hung_up": sum(1 for c in calls if c.get("bye") == 200),
        "statuses": sorted({c.get("status", 0) for c in calls}),
        "push_ms": push_ms,
        "wake_ms": wake_ms,
        "story_ms": story,
        "lag_ms": lag_ms,
        "cpu": cpu / elapsed,
        "load_cpu": (caller["cpu"] + phones["cpu"]) / elapsed,
    }


def summary(values: list[float]) -> str:
    """p50 / p99 / max in ms."""
    if not values:
        return "no samples"
    return (
        f"p50 {percentile(values, 50):6.2f}  p99 {percentile(values, 99):6.2f}  "
        f"max {max(values):7.2f} ms  (n={len(values)})"
    )


def report(number: int, result: dict[str, Any]) -> None:
    """Print one run's figures."""
    print(
        f"run {number}: {result['connected']}/{result['calls']} calls connected, "
        f"{result['hung_up']} hung up, final statuses {result['statuses']}, "
        f"CPU: sipushd {result['cpu'] * 100:.0f}% of one core, "
        f"caller + phones {result['load_cpu'] * 100:.0f}% (call phase); sipushd idle "
        f"{result['settled']:.1f} s after the phones registered; machine (2 cores, all "
        f"processes) {result['busy'] * 100:.0f}% busy during the calls"
    )
    print(f"  (a) INVITE -> push at mock        {summary(result['push_ms'])}")
    print(f"  (b) REGISTER -> INVITE at phone   {summary(result['wake_ms'])}")
    print(f"      sipushd log registered->fwd   {summary(result['story_ms'])}")
    print(f"      noise: caller's send lag      {summary(result['lag_ms'])}")


def spread(results: list[dict[str, Any]]) -> None:
    """Min-max of p50 and p99 across runs."""
    for key, label in (("push_ms", "(a)"), ("wake_ms", "(b)")):
        rows = [r[key] for r in results if r[key]]
        if not rows:
            continue
        p50 = [percentile(v, 50) for v in rows]
        p99 = [percentile(v, 99) for v in rows]
        print(
            f"spread {label} over {len(rows)} runs: p50 {min(p50):.2f}-{max(p50):.2f} ms, "
            f"p99 {min(p99):.2f}-{max(p99):.2f} ms"
        )


def interrupted(signum: int, frame: object) -> None:
    """SIGTERM handler: raise KeyboardInterrupt."""
    raise KeyboardInterrupt


def main() -> int:
    """Parse arguments; run the benchmark or one of its load processes."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("role", nargs="?", default="bench", choices=["bench", "_phones", "_caller"])
    parser.add_argument("--rate", type=float, default=50.0, help="calls per second (50)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of calls (20)")
    parser.add_argument("--phones", type=int, default=0, help="phones (default: one per call)")
    parser.add_argument("--transport", choices=["tcp", "udp"], default="tcp")
    parser.add_argument("--warmup", type=int, default=10, help="first calls left out (10)")
    parser.add_argument("--hold", type=float, default=0.05, help="seconds from ACK to BYE")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=(os.cpu_count() or 1) >= 2,
        help="sipushd alone on CPU 1, mock, caller and phones on CPU 0 (default with 2+ CPUs)",
    )
    parser.add_argument("--keep", type=Path, help="keep logs and records in this directory")
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--mock", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role != "bench":
        install_loop_policy()
        asyncio.run(phones_main(args) if args.role == "_phones" else caller_main(args))
        return 0
    # SIGTERM unwinds like Ctrl-C, so every child is stopped on the way out.
    signal.signal(signal.SIGTERM, interrupted)
    args.calls = int(args.rate * args.duration) + args.warmup
    args.phones = args.phones or args.calls
    print(
        f"wake-up latency: {args.calls} calls ({args.warmup} warm-up) at {args.rate:g}/s "
        f"to {args.phones} sleeping {args.transport.upper()} phones, APNs via sipushd mock-pns"
    )
    results = []
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(prefix="bench-wakeup-") as tmp:
            work = Path(tmp)
            if args.keep is not None:
                work = args.keep / f"run{number}"
                work.mkdir(parents=True, exist_ok=True)
            try:
                results.append(run_once(work, args))
            except KeyboardInterrupt:
                print("interrupted: every process started here was stopped")
                return 130
        report(number, results[-1])
    if len(results) > 1:
        spread(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
