"""The mock push service: a local stand-in for APNs and FCM HTTP v1 that records every push.

This module is the service around the provider endpoints (`pns_endpoints`): its
lifecycle, the routing of requests, the record of every push (in memory, `--record`
file, `--on-push` command, `wait_for_push`), the control API (`GET`/`DELETE /pushes`,
`GET`/`PUT /rules`, served on the same port) and the `sipushd mock-pns` command line.

Rules: answers are framed exactly like Apple's and Google's (PUSH-PROTOCOLS.md; see
`pns_endpoints`). A request is validated first; scripted failures (`--respond`) apply
only to requests that would otherwise succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import ssl
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import uvloop

from sipushd.app import tune_gc
from sipushd.testing import pns_protocol as proto
from sipushd.testing.h2server import (
    H2Server,
    Request,
    Response,
    memoize_huffman_decoding,
    server_ssl_context,
)
from sipushd.testing.pki import (
    ensure_server_credentials,
    write_test_apns_key,
    write_test_service_account,
)
from sipushd.testing.pns_endpoints import ApnsEndpoint, FcmEndpoint, json_response, parse_json
from sipushd.testing.pns_rules import RULE_HELP, ResponseRule, RuleError, RuleSet, parse_rule

__all__ = [
    "MockPushService",
    "RecordedPush",
    "ResponseRule",
    "RuleError",
    "add_arguments",
    "parse_rule",
    "run",
    "write_test_apns_key",
    "write_test_service_account",
]

_log = logging.getLogger(__name__)

_MAX_WAIT = 60.0


@dataclass(frozen=True, slots=True)
class RecordedPush:
    """One push request the service received and how it answered it."""

    provider: str
    token: str
    headers: Mapping[str, str]
    payload: Any
    status: int
    time: float  # when the request arrived complete (time.time())
    path: str = ""
    reason: str | None = None
    index: int = 0

    @property
    def push_type(self) -> str:
        """APNs push type, or for FCM "notification" / "data"."""
        if self.provider == "apns":
            return self.headers.get("apns-push-type", "")
        message = self.payload.get("message") if isinstance(self.payload, dict) else None
        if isinstance(message, dict) and "notification" in message:
            return "notification"
        return "data"

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON-ready dict (the shape of `GET /pushes` items)."""
        return asdict(self)

    def to_json(self) -> str:
        """The record as one line of JSON."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    """Write `data` to the command's stdin and close it; a command may exit unread."""
    stdin = proc.stdin
    assert stdin is not None
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
    except (BrokenPipeError, ConnectionResetError):
        pass
    except RuntimeError:
        # uvloop: the pipe was already closed because the command exited first.
        pass


class MockPushService:
    """APNs + FCM stand-in on one HTTPS/HTTP2 port, recording every push."""

    def __init__(
        self,
        state_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        rules: Sequence[str] = (),
        on_push: str | None = None,
        record: Path | None = None,
        apns_public_keys: Sequence[Path] = (),
        max_records: int = 100_000,
    ) -> None:
        self._state_dir = Path(state_dir)
        self._host = host
        self._requested_port = port
        self._rules = RuleSet([parse_rule(text) for text in rules])
        self._on_push = on_push
        self._record_path = record
        self._apns = ApnsEndpoint(self._pick, self._record, apns_public_keys)
        self._fcm = FcmEndpoint(self._pick, self._record)
        self._records: collections.deque[RecordedPush] = collections.deque(maxlen=max_records)
        self._next_index = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self._hooks: set[asyncio.Task[None]] = set()
        self._record_file: IO[str] | None = None
        self._server: H2Server | None = None
        self._ca_file = self._state_dir / "ca.pem"

    # lifecycle

    async def start(self) -> None:
        """Create the certificates if needed, bind and start serving."""
        creds = await asyncio.to_thread(ensure_server_credentials, self._state_dir)
        self._ca_file = creds.ca_file
        server = H2Server(self._handle, server_ssl_context(creds.cert_file, creds.key_file))
        await server.start(self._host, self._requested_port)
        self._server = server
        if self._record_path is not None:
            self._record_file = self._record_path.open("a", encoding="utf-8")

    async def stop(self) -> None:
        """Stop serving, let running --on-push commands finish (5 s at most)."""
        if self._server is not None:
            await self._server.stop()
            self._server = None
        if self._hooks:
            _done, pending = await asyncio.wait(set(self._hooks), timeout=5.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._record_file is not None:
            self._record_file.close()
            self._record_file = None

    async def __aenter__(self) -> MockPushService:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # properties and test helpers

    @property
    def port(self) -> int:
        """The bound port."""
        if self._server is None:
            raise RuntimeError("MockPushService is not started")
        return self._server.port

    @property
    def base_url(self) -> str:
        """e.g. "https://127.0.0.1:8443"; APNs, FCM, /token and /pushes live under it."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"https://{host}:{self.port}"

    @property
    def token_uri(self) -> str:
        """The OAuth2 token endpoint for a test service account."""
        return f"{self.base_url}/token"

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients must trust."""
        return self._ca_file

    @property
    def pushes(self) -> list[RecordedPush]:
        """Every recorded push still kept, oldest first."""
        return list(self._records)

    def client_ssl_context(self) -> ssl.SSLContext:
        """A client TLS context trusting only this service's CA."""
        context = ssl.create_default_context(cafile=str(self._ca_file))
        context.set_alpn_protocols(["h2"])
        return context

    def clear(self) -> None:
        """Forget the recorded pushes (indexes keep counting up)."""
        self._records.clear()

    def set_rules(self, rules: Sequence[str]) -> None:
        """Replace the scripted answers (raises RuleError, leaving the old ones, if bad)."""
        self._rules = RuleSet([parse_rule(text) for text in rules])

    async def wait_for_push(
        self,
        predicate: Callable[[RecordedPush], bool] | None = None,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> RecordedPush:
        """The oldest recorded push (index >= since) matching `predicate`, waiting for one.

        Raises TimeoutError when none arrives within `timeout` seconds.
        """
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for push in self._select(since):
                        if predicate is None or predicate(push):
                            return push
                    since = max(since, self._next_index)  # look at each push only once
                    await self._changed()
        except TimeoutError:
            raise TimeoutError(f"no matching push within {timeout} s") from None

    # recording

    def _select(self, since: int) -> list[RecordedPush]:
        found = []
        for push in reversed(self._records):
            if push.index < since:
                break
            found.append(push)
        found.reverse()
        return found

    async def _changed(self) -> None:
        future = asyncio.get_running_loop().create_future()
        self._waiters.add(future)
        try:
            await future
        finally:
            self._waiters.discard(future)

    def _record(
        self,
        provider: str,
        request: Request,
        token: str,
        payload: Any,
        failure: proto.Failure | None,
    ) -> RecordedPush:
        headers = dict(request.headers)
        auth = headers.get("authorization")
        if auth is not None:
            scheme, sep, _ = auth.partition(" ")
            headers["authorization"] = f"{scheme} <redacted>" if sep else "<redacted>"
        status, reason = (failure.status, failure.reason) if failure else (200, None)
        push = RecordedPush(
            provider,
            token,
            headers,
            payload,
            status,
            request.received_at,
            path=request.path,
            reason=reason,
            index=self._next_index,
        )
        self._next_index += 1
        self._records.append(push)
        if self._record_file is not None:
            self._record_file.write(push.to_json() + "\n")
            self._record_file.flush()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()
        _log.info(
            "%s %s token=%s… -> %d %s", provider, push.push_type, token[:8], status, reason or ""
        )
        if status == 200 and self._on_push is not None:
            task = asyncio.get_running_loop().create_task(self._run_hook(self._on_push, push))
            self._hooks.add(task)
            task.add_done_callback(self._hooks.discard)
        return push

    async def _run_hook(self, command: str, push: RecordedPush) -> None:
        env = dict(os.environ)
        env.update(
            SIPUSHD_PUSH_TOKEN=push.token,
            SIPUSHD_PUSH_PROVIDER=push.provider,
            SIPUSHD_PUSH_TYPE=push.push_type,
        )
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE, env=env
            )
        except OSError as exc:
            _log.warning("on-push command could not start: %s", exc)
            return
        try:
            await _feed(proc, push.to_json().encode() + b"\n")
            await proc.wait()
        except asyncio.CancelledError:
            proc.kill()
            await proc.wait()
            raise
        _log.log(
            logging.INFO if proc.returncode == 0 else logging.WARNING,
            "on-push command exited with status %s (push %d)",
            proc.returncode,
            push.index,
        )

    # request routing

    async def _handle(self, request: Request) -> Response:
        path = request.path
        if path.startswith("/3/"):
            return await self._apns.handle(request)
        if path.startswith("/v1/"):
            return await self._fcm.send(request)
        if path == "/token":
            return self._fcm.token(request)
        if path == "/pushes":
            return await self._pushes(request)
        if path == "/rules":
            return self._rules_api(request)
        return json_response(404, {"error": f"no such path: {path}"})

    def _pick(self, provider: str, token: str) -> tuple[ResponseRule | None, float]:
        """The current rules' answer for a push that passed the checks (see `RuleSet.pick`)."""
        return self._rules.pick(provider, token)

    # control API

    async def _pushes(self, request: Request) -> Response:
        if request.method == "DELETE":
            cleared = len(self._records)
            self.clear()
            return json_response(200, {"cleared": cleared})
        if request.method != "GET":
            return json_response(405, {"error": "use GET or DELETE"})
        query = urllib.parse.parse_qs(request.query)
        token = query.get("token", [None])[0]
        provider = query.get("provider", [None])[0]
        try:
            since = int(query.get("since", ["0"])[0])
            wait = min(float(query.get("wait", ["0"])[0]), _MAX_WAIT)
        except ValueError:
            return json_response(400, {"error": "since must be an integer and wait a number"})

        def matches(push: RecordedPush) -> bool:
            return (token is None or push.token == token) and (
                provider is None or push.provider == provider
            )

        found = [push for push in self._select(since) if matches(push)]
        if not found and wait > 0:
            try:
                first = await self.wait_for_push(matches, wait, since=since)
            except TimeoutError:
                pass
            else:
                found = [push for push in self._select(first.index) if matches(push)]
        pushes = [push.to_dict() for push in found]
        return json_response(200, {"pushes": pushes, "next": self._next_index})

    def _rules_api(self, request: Request) -> Response:
        if request.method == "PUT":
            body = parse_json(request.body)
            rules = body.get("rules") if isinstance(body, dict) else None
            if not isinstance(rules, list) or not all(isinstance(r, str) for r in rules):
                return json_response(400, {"error": 'send {"rules": ["RULE", ...]}'})
            try:
                self.set_rules(rules)
            except RuleError as exc:
                return json_response(400, {"error": str(exc)})
        elif request.method != "GET":
            return json_response(405, {"error": "use GET or PUT"})
        return json_response(200, {"rules": [rule.text for rule in self._rules.rules]})


# command line

_CLI_HELP = f"""\
APNs: POST /3/device/<hex token>    FCM: POST /v1/projects/<id>/messages:send
OAuth2 token endpoint for FCM service accounts: POST /token
Control API (same port): GET /pushes[?token=T&provider=P&since=N&wait=SECONDS],
DELETE /pushes, GET /rules, PUT /rules {{"rules": ["RULE", ...]}}.
--on-push CMD runs `/bin/sh -c CMD` for each accepted push with the push as JSON on
stdin and SIPUSHD_PUSH_TOKEN, SIPUSHD_PUSH_PROVIDER, SIPUSHD_PUSH_TYPE in the environment.

{RULE_HELP}"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sipushd mock-pns`."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = _CLI_HELP
    parser.add_argument(
        "--listen",
        type=_listen_address,
        default=("127.0.0.1", 8443),
        metavar="HOST:PORT",
        help="address to serve HTTPS/HTTP2 on; port 0 picks a free one (default 127.0.0.1:8443)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path("data/mock-pns"),
        metavar="DIR",
        help="where ca.pem and the server certificate live (default data/mock-pns)",
    )
    parser.add_argument("--record", type=Path, metavar="FILE", help="append pushes as JSON lines")
    parser.add_argument("--on-push", metavar="CMD", help="shell command run for every push")
    parser.add_argument(
        "--respond",
        type=_rule,
        action="append",
        default=[],
        metavar="RULE",
        help="script failures or delays (repeatable; syntax below)",
    )
    parser.add_argument(
        "--apns-key-file",
        type=Path,
        action="append",
        default=[],
        metavar="PEM",
        help="APNs team key (P-256 public key PEM or the .p8) to verify provider tokens "
        "with (repeatable; without one, token signatures are not checked)",
    )
    parser.add_argument(
        "--max-records", type=int, default=100_000, metavar="N", help="pushes kept in memory"
    )
    parser.add_argument("--quiet", action="store_true", help="do not log every push")


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 2 for bad arguments, 1 if the port cannot be bound."""
    host, port = args.listen
    try:
        service = MockPushService(
            args.state_dir,
            host,
            port,
            rules=[rule.text for rule in args.respond],
            on_push=args.on_push,
            record=args.record,
            apns_public_keys=args.apns_key_file,
            max_records=args.max_records,
        )
    except (OSError, ValueError) as exc:
        print(f"sipushd mock-pns: error: {exc}", file=sys.stderr)
        return 2
    logger = logging.getLogger("sipushd.testing")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("mock-pns: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if args.quiet else logging.INFO)
    # The daemon's loop and GC settings: a slow or paused mock would show up as push
    # latency in the tests and benchmarks that measure sipushd through it.
    tune_gc()
    memoize_huffman_decoding()  # FCM access tokens: see there
    try:
        return uvloop.run(_serve(service))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


async def _serve(service: MockPushService) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await service.start()
    except OSError as exc:
        print(f"sipushd mock-pns: error: {exc}", file=sys.stderr)
        return 1
    print(f"mock-pns listening on {service.base_url} ca={service.ca_file}", flush=True)
    await stop.wait()
    await service.stop()
    return 0


def _listen_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _rule(text: str) -> ResponseRule:
    try:
        return parse_rule(text)
    except RuleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
