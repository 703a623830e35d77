"""Shared pieces of the proxy integration tests: a daemon on loopback, phones, a push recorder."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.core.payload import PushRequest
from sipushd.push.base import PushOutcome, PushResult
from sipushd.push.dispatcher import Dispatcher
from sipushd.sip import Request, Response, make_response
from sipushd.sip.digest import digest_response
from sipushd.testing.ua import SipClient

VOIP_PARAMS = (
    "pn-provider=apns.dev;pn-param=ABCD1234.org.example.app.voip%26remote;"
    "pn-prid=00aa11bb:voip%2622cc33dd:remote"
)
ALERT_PARAMS = "pn-provider=apns;pn-param=ABCD1234.org.example.app;pn-prid=44ee55ff"
SDP = (
    b"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    b"m=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
)


class PushRecorder:
    """Stands in front of the dispatcher: records pushes; with `fail` set, answers each with
    `failure` (the provider's outcome and HTTP status, and reason) instead of sending it."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        failure: tuple[PushOutcome, int, str] = (PushOutcome.DEAD_TOKEN, 410, ""),
    ) -> None:
        self.dispatcher = dispatcher
        self.failure = failure
        self.pushes: list[PushRequest] = []
        self.fail = False
        self.arrived = asyncio.Event()

    def submit(self, request: PushRequest) -> asyncio.Future[PushResult]:
        self.pushes.append(request)
        self.arrived.set()
        if self.fail:
            outcome, status, reason = self.failure
            future: asyncio.Future[PushResult] = asyncio.get_running_loop().create_future()
            future.set_result(PushResult(outcome, request.provider, status, reason))
            return future
        return self.dispatcher.submit(request)

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[PushRequest]:
        async with asyncio.timeout(timeout):
            while len(self.pushes) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.pushes


PASSWORD = "secret-pass"


def config(tmp_path: Path, **overrides: Any) -> Config:
    raw: dict[str, Any] = {
        "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
        "storage": {"sqlite": {"path": ":memory:"}},
        "push": {"mock": {"enabled": True}},
        "routing": {"call_timeout": 5},
        "admin": {"listen": "127.0.0.1:0"},
    }
    for key, value in overrides.items():
        raw.setdefault(key, {}).update(value)
    return Config.model_validate(raw)


def auth_config(tmp_path: Path, user: str) -> Config:
    """A config with digest auth on (RFC 3261 §22) and one user whose password is PASSWORD."""
    from sipushd.users import set_user

    users = tmp_path / "users.yaml"
    set_user(users, "example.org", user, PASSWORD)
    return config(
        tmp_path, auth={"enabled": True, "realm": "example.org", "users_file": str(users)}
    )


@asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[tuple[Daemon, PushRecorder]]:
    daemon = Daemon(cfg)
    await daemon.start()
    assert daemon.proxy is not None and daemon.dispatcher is not None
    recorder = PushRecorder(daemon.dispatcher)
    daemon.proxy.pushes = recorder
    try:
        yield daemon, recorder
    finally:
        await daemon.stop(0)


def address(daemon: Daemon, transport: str) -> tuple[str, int]:
    endpoint = next(e for e in daemon.listeners if e.transport == transport)
    return endpoint.host, endpoint.port


async def phone(daemon: Daemon, transport: str = "tcp") -> SipClient:
    return await SipClient.connect(transport, address(daemon, transport))


def contact_of(ua: SipClient, user: str = "bob", params: str = "") -> str:
    host, port = ua.local
    extra = f";{params}" if params else ""
    return f"sip:{user}@{host}:{port};transport={ua.transport_name}{extra}"


def instance(n: int) -> str:
    return f'"<urn:uuid:00000000-0000-0000-0000-{n:012d}>"'


async def register(
    ua: SipClient,
    *,
    user: str = "bob",
    params: str = "",
    uuid: int | None = None,
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    value = f"<{contact_of(ua, user, params)}>"
    if uuid is not None:
        value += f";+sip.instance={instance(uuid)}"
    request = ua.build(
        "REGISTER",
        "sip:example.org",
        [("Contact", value), ("Expires", "600"), *headers],
        to=f"sip:{user}@example.org",
        from_=f"sip:{user}@example.org",
    )
    ua.send(request)
    return await ua.final_response()


async def registered(
    daemon: Daemon,
    transport: str = "tcp",
    *,
    params: str = "",
    uuid: int | None = None,
) -> SipClient:
    """A phone connected over `transport` whose REGISTER for bob got a 200."""
    ua = await phone(daemon, transport)
    assert (await register(ua, params=params, uuid=uuid)).status == 200
    return ua


async def register_asleep(daemon: Daemon, *, params: str, uuid: int) -> None:
    """Register a push-capable phone, then close its connection (the OS killed its socket)."""
    ua = await registered(daemon, params=params, uuid=uuid)
    await ua.close()


@asynccontextmanager
async def running_with_upstream(
    tmp_path: Path, host: str | None = None
) -> AsyncIterator[tuple[Daemon, SipClient, str]]:
    """A daemon whose routing.upstream is a UDP peer playing the PBX: (daemon, pbx, its URI).

    `host` names the PBX in the URI instead of its IP address (a name to look up).
    """
    async with await SipClient.connect("udp", ("127.0.0.1", 9)) as pbx:
        upstream = f"sip:{host or pbx.local[0]}:{pbx.local[1]}"
        async with running(config(tmp_path, routing={"upstream": upstream})) as (daemon, _):
            pbx.server = address(daemon, "udp")
            yield daemon, pbx, upstream


def authorization(challenge: Response, user: str, password: str, method: str, uri: str) -> str:
    ch = challenge.www_authenticate[0]
    realm, nonce = ch.param("realm") or "", ch.param("nonce") or ""
    algorithm = ch.param("algorithm") or "MD5"
    from sipushd.sip.digest import ha1

    cnonce, nc = secrets.token_hex(4), "00000001"
    key = ha1(user, realm, password, algorithm)
    response = digest_response(key, method, uri, nonce, nc, cnonce, "auth", algorithm)
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"'
    )


def invite(caller: SipClient, target: str = "sip:bob@example.org") -> Request:
    return caller.build(
        "INVITE",
        target,
        [
            ("Contact", f"<sip:alice@{caller.local[0]}:{caller.local[1]}>"),
            ("Content-Type", "application/sdp"),
        ],
        SDP,
        from_="sip:alice@example.net",
    )


def answer(ua: SipClient, request: Request, status: int, tag: str = "callee") -> Response:
    """Answer like a UAS that copies Record-Route and gives its Contact (§12.1.1)."""
    headers = [("Record-Route", v) for v in request.headers.get_all("Record-Route")]
    if status < 300 and request.method == "INVITE":
        headers.append(("Contact", f"<{contact_of(ua)}>"))
    response = make_response(request, status, to_tag=tag, headers=headers)
    ua.send(response)
    return response


def in_dialog(
    caller: SipClient, invite_: Request, ok: Response, method: str, cseq: int | None = None
) -> Request:
    """A request of the caller inside the dialog the 2xx set up (§12.2.1.1)."""
    route = [("Route", v) for v in reversed(ok.headers.values("Record-Route"))]
    request = caller.build(
        method,
        str(ok.contacts[0].uri),
        route,
        from_="sip:alice@example.net",
        cseq=invite_.cseq.seq if method == "ACK" else cseq,
    )
    return request.replace(headers=request.headers.set("To", ok.headers.get("To") or ""))


async def no_request(ua: SipClient, method: str, wait: float = 0.3) -> bool:
    """True when no `method` request arrives within `wait` seconds."""
    try:
        await ua.next_request(method, timeout=wait)
    except TimeoutError:
        return True
    return False
