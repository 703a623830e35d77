"""`sipushd run` as a real process under a fake systemd: readiness, reload, stop, watchdog.

The test plays systemd's side of sd_notify(3): an AF_UNIX datagram socket named by
NOTIFY_SOCKET that collects READY=1, RELOADING=1, STOPPING=1 and WATCHDOG=1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import yaml

from sipushd.app import Daemon, reload_config_file
from sipushd.config import Config, load_config
from sipushd.sip import Request, Response
from sipushd.sip.digest import digest_response, ha1
from sipushd.testing.net import free_port
from sipushd.testing.pki import ensure_server_credentials
from sipushd.testing.ua import SipClient
from sipushd.users import set_user

REALM = "example.org"


@dataclass
class Systemd:
    """The notify socket the child process reports to."""

    sock: socket.socket
    path: str

    async def next(self, timeout: float = 20.0) -> str:
        """The next notification."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return data.decode()

    async def expect(self, state: str, timeout: float = 20.0) -> list[str]:
        """Notifications up to and including the first holding `state` (e.g. "READY=1")."""
        seen: list[str] = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next()
                seen.append(message)
                if state in message.split("\n"):
                    return seen


@pytest.fixture
def systemd() -> Iterator[Systemd]:
    # AF_UNIX paths are short (108 bytes): pytest's tmp_path can be too long.
    with tempfile.TemporaryDirectory(prefix="sd") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        with sock:
            yield Systemd(sock, path)


@dataclass
class Child:
    """A `sipushd run` process and where it listens."""

    process: subprocess.Popen[bytes]
    config_path: Path
    config: dict[str, Any]
    log_path: Path
    sip_port: int
    admin_port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def write_config(self, config: dict[str, Any]) -> None:
        self.config = config
        self.config_path.write_text(yaml.safe_dump(config))

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout: float = 20.0) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)

    def admin(self, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.admin_port}{path}", timeout=5)


def _auth_with_alice(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A users file holding alice (password alice-secret) and the `auth` section naming it."""
    users = tmp_path / "users.yaml"
    set_user(users, REALM, "alice", "alice-secret")
    return users, {"enabled": True, "realm": REALM, "users_file": str(users)}


def _config(tmp_path: Path, sip_port: int, admin_port: int) -> dict[str, Any]:
    return {
        "sip": {"domains": [REALM], "listen": [f"udp:127.0.0.1:{sip_port}"]},
        "storage": {"sqlite": {"path": str(tmp_path / "sipushd.db")}},
        "admin": {"listen": f"127.0.0.1:{admin_port}"},
        "logging": {"format": "json", "level": "info"},
        "shutdown_grace": 1,
    }


def _spawn(config_path: Path, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "sipushd", "run", "--config", str(config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )


async def _start(
    tmp_path: Path,
    systemd: Systemd,
    change: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> Child:
    sip_port, admin_port = free_port(), free_port()
    config = _config(tmp_path, sip_port, admin_port) | (change or {})
    config_path = tmp_path / "sipushd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp_path / "sipushd.log"
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
    environment |= {"NOTIFY_SOCKET": systemd.path, **(env or {})}
    process = _spawn(config_path, log_path, environment)
    child = Child(process, config_path, config, log_path, sip_port, admin_port)
    try:
        await systemd.expect("READY=1")
    except TimeoutError:
        process.kill()
        process.wait()
        raise AssertionError(f"sipushd did not report READY=1:\n{child.log()}") from None
    return child


@pytest_asyncio.fixture
async def cleanup() -> AsyncIterator[list[Child]]:
    """Kill children a failed test left running."""
    children: list[Child] = []
    yield children
    for child in children:
        if child.process.poll() is None:
            child.process.kill()
            child.process.wait()


async def _options(child: Child) -> Response:
    async with await SipClient.connect("udp", ("127.0.0.1", child.sip_port)) as ua:
        return await ua.request("OPTIONS", f"sip:127.0.0.1:{child.sip_port}")


async def _register(child: Child, user: str, password: str) -> Response:
    """REGISTER `user`, answering one Digest challenge (RFC 3261 §22.2)."""
    async with await SipClient.connect("udp", ("127.0.0.1", child.sip_port)) as ua:
        contact = f"<sip:{user}@{ua.local[0]}:{ua.local[1]}>"
        uri = f"sip:{REALM}"
        headers = [("Contact", contact), ("Expires", "600")]
        aor = f"sip:{user}@{REALM}"
        ua.send(ua.build("REGISTER", uri, headers, to=aor, from_=aor))
        challenge = await ua.final_response()
        if challenge.status != 401:
            return challenge
        ch = challenge.www_authenticate[0]
        nonce, algorithm = ch.param("nonce") or "", ch.param("algorithm") or "MD5"
        cnonce, nc = secrets.token_hex(4), "00000001"
        key = ha1(user, REALM, password, algorithm)
        digest = digest_response(key, "REGISTER", uri, nonce, nc, cnonce, "auth", algorithm)
        authorization = (
            f'Digest username="{user}", realm="{REALM}", nonce="{nonce}", uri="{uri}", '
            f'response="{digest}", algorithm={algorithm}, qop=auth, nc={nc}, cnonce="{cnonce}"'
        )
        headers.append(("Authorization", authorization))
        ua.send(ua.build("REGISTER", uri, headers, to=aor, from_=aor))
        return await ua.final_response()


@pytest.mark.asyncio
async def test_ready_then_sigterm_stops_with_exit_0(
    tmp_path: Path, systemd: Systemd, cleanup: list[Child]
) -> None:
    child = await _start(tmp_path, systemd)
    cleanup.append(child)
    assert (await _options(child)).status == 200
    assert child.admin("/health").status_code == 200
    child.signal(signal.SIGTERM)
    await systemd.expect("STOPPING=1")
    assert await child.wait() == 0, child.log()
    assert '"stopped"' in child.log()


@pytest.mark.asyncio
async def test_sighup_reloads_users_and_log_level_and_keeps_bindings(
    tmp_path: Path, systemd: Systemd, cleanup: list[Child]
) -> None:
    users, auth = _auth_with_alice(tmp_path)
    child = await _start(tmp_path, systemd, {"auth": auth})
    cleanup.append(child)
    assert (await _register(child, "alice", "alice-secret")).status == 200
    assert (await _register(child, "bob", "bob-secret")).status != 200
    assert '"registered"' not in child.log()  # a debug line: not at level info

    set_user(users, REALM, "bob", "bob-secret")
    child.write_config(child.config | {"logging": {"format": "json", "level": "debug"}})
    child.signal(signal.SIGHUP)
    [reloading, *_] = await systemd.expect("READY=1")
    assert reloading.startswith("RELOADING=1\nMONOTONIC_USEC=")

    assert (await _register(child, "bob", "bob-secret")).status == 200
    assert '"registered"' in child.log()
    assert len(child.admin("/bindings/alice@example.org").json()) == 1
    assert len(child.admin("/bindings/bob@example.org").json()) == 1
    child.signal(signal.SIGTERM)
    assert await child.wait() == 0, child.log()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("sip: [unclosed\n", "YAML"),
        (None, "unknown key 'colour'"),
    ],
)
async def test_sighup_with_a_broken_file_keeps_the_running_config(
    tmp_path: Path, systemd: Systemd, cleanup: list[Child], text: str | None, reason: str
) -> None:
    child = await _start(tmp_path, systemd)
    cleanup.append(child)
    if text is None:
        child.write_config(child.config | {"colour": "blue"})
    else:
        child.config_path.write_text(text)
    child.signal(signal.SIGHUP)
    [reloading, *_] = await systemd.expect("READY=1")
    assert reloading.startswith("RELOADING=1")

    assert (await _options(child)).status == 200
    assert child.admin("/health").json()["status"] == "ok"
    failure = next(line for line in child.log().splitlines() if "reload failed" in line)
    assert reason in failure
    child.signal(signal.SIGTERM)
    assert await child.wait() == 0, child.log()


@pytest.mark.asyncio
async def test_watchdog_pings_when_systemd_asks(
    tmp_path: Path, systemd: Systemd, cleanup: list[Child]
) -> None:
    child = await _start(tmp_path, systemd, env={"WATCHDOG_USEC": "200000"})
    cleanup.append(child)
    await systemd.expect("WATCHDOG=1", timeout=5)
    await systemd.expect("WATCHDOG=1", timeout=5)
    child.signal(signal.SIGTERM)
    assert await child.wait() == 0, child.log()


@pytest.mark.asyncio
async def test_no_watchdog_pings_for_another_process(
    tmp_path: Path, systemd: Systemd, cleanup: list[Child]
) -> None:
    env = {"WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    child = await _start(tmp_path, systemd, env=env)
    cleanup.append(child)
    child.signal(signal.SIGTERM)
    seen = await systemd.expect("STOPPING=1")
    assert "WATCHDOG=1" not in seen
    assert await child.wait() == 0, child.log()


# --- Daemon.reload in process -------------------------------------------------------------

PUSH_CONTACT = "pn-provider=fcm;pn-param=my-project;pn-prid=cafe0123"


def _in_process(tmp_path: Path, **sections: Any) -> Config:
    raw: dict[str, Any] = {
        "sip": {"domains": [REALM], "listen": ["udp:127.0.0.1:0"]},
        "storage": {"sqlite": {"path": str(tmp_path / "db.sqlite")}},
        "admin": {"listen": "127.0.0.1:0"},
    }
    return Config.model_validate(raw | sections)


async def _register_push(daemon: Daemon) -> Response:
    udp = daemon.listeners[0]
    async with await SipClient.connect("udp", (udp.host, udp.port)) as ua:
        contact = f"<sip:carol@{ua.local[0]}:{ua.local[1]};{PUSH_CONTACT}>"
        aor = f"sip:carol@{REALM}"
        request = ua.build("REGISTER", f"sip:{REALM}", [("Contact", contact)], to=aor, from_=aor)
        ua.send(request)
        return await ua.final_response()


@pytest.mark.asyncio
async def test_reload_swaps_push_providers_and_timers_in_place(tmp_path: Path) -> None:
    daemon = Daemon(_in_process(tmp_path))
    await daemon.start()
    try:
        assert (await _register_push(daemon)).status == 555  # no provider for fcm yet
        old_dispatcher, listeners = daemon.dispatcher, list(daemon.listeners)
        new = _in_process(
            tmp_path,
            push={"mock": {"enabled": True}},
            routing={"call_timeout": 30},
            sip={"domains": [REALM, "other.org"], "listen": ["udp:127.0.0.1:0"]},
        )
        await daemon.reload(new)
        assert daemon.dispatcher is not old_dispatcher
        assert daemon.proxy is not None and daemon.proxy.pushes is daemon.dispatcher
        assert daemon.proxy.settings.call_timeout == 30
        assert daemon.config.sip.domains == [REALM]  # listeners and domains need a restart
        assert daemon.listeners == listeners
        assert (await _register_push(daemon)).status == 200
        assert daemon.admin is not None
        host, port = daemon.admin.address
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            body = {"provider": "fcm", "app": "my-project", "token": "cafe0123"}
            answer = (await client.post("/push-test", json=body)).json()
            assert answer["result"] == "delivered"
            [binding] = (await client.get("/bindings/carol@example.org")).json()
            assert binding["push"]["provider"] == "fcm"
    finally:
        await daemon.stop(0)


@pytest.mark.asyncio
async def test_reload_with_a_broken_users_file_changes_nothing(tmp_path: Path) -> None:
    users, auth = _auth_with_alice(tmp_path)
    daemon = Daemon(_in_process(tmp_path, auth=auth))
    await daemon.start()
    try:
        assert daemon.registrar is not None
        gate, dispatcher = daemon.registrar.auth, daemon.dispatcher
        users.write_text("users: [not, a, mapping\n")
        with pytest.raises(ValueError, match="users"):
            await daemon.reload(_in_process(tmp_path, auth=auth, logging={"level": "debug"}))
        assert daemon.registrar.auth is gate
        assert daemon.dispatcher is dispatcher
        assert daemon.config.logging.level == "info"
    finally:
        await daemon.stop(0)


@pytest.mark.asyncio
async def test_reload_keeps_issued_nonces_valid(tmp_path: Path) -> None:
    users, auth = _auth_with_alice(tmp_path)
    daemon = Daemon(_in_process(tmp_path, auth=auth))
    await daemon.start()
    try:
        assert daemon.registrar is not None and daemon.registrar.auth is not None
        authenticator = daemon.registrar.auth.authenticator
        set_user(users, REALM, "bob", "bob-secret")
        await daemon.reload(_in_process(tmp_path, auth=auth))
        gate = daemon.registrar.auth
        assert gate is not None and gate.authenticator is authenticator
        assert set(gate.users) == {"alice", "bob"}
        assert daemon.proxy is not None and daemon.proxy.auth is gate
    finally:
        await daemon.stop(0)


VOIP_CONTACT = "pn-provider=apns;pn-param=ABCD1234.org.example.app.voip;pn-prid=00aa11bb"
PHONE = '"<urn:uuid:00000000-0000-0000-0000-000000000007>"'


async def _phone_register(ua: SipClient) -> Response:
    contact = f"<sip:bob@{ua.local[0]}:{ua.local[1]};transport=tcp;{VOIP_CONTACT}>"
    aor = f"sip:bob@{REALM}"
    headers = [("Contact", f"{contact};+sip.instance={PHONE}"), ("Expires", "600")]
    ua.send(ua.build("REGISTER", f"sip:{REALM}", headers, to=aor, from_=aor))
    return await ua.final_response()


def _invite(ua: SipClient) -> Request:
    contact = f"<sip:alice@{ua.local[0]}:{ua.local[1]}>"
    return ua.build(
        "INVITE",
        f"sip:bob@{REALM}",
        [("Contact", contact), ("Content-Type", "application/sdp")],
        b"v=0\r\n",
        from_="sip:alice@example.net",
        call_id=secrets.token_hex(8),
    )


@pytest.mark.asyncio
async def test_stop_lets_a_held_call_finish_and_refuses_new_calls(tmp_path: Path) -> None:
    config = _in_process(
        tmp_path,
        sip={"domains": [REALM], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
        push={"mock": {"enabled": True}},
    )
    daemon = Daemon(config)
    await daemon.start()
    stopping: asyncio.Task[None] | None = None
    udp, tcp = (next(e for e in daemon.listeners if e.transport == t) for t in ("udp", "tcp"))
    try:
        asleep = await SipClient.connect("tcp", (tcp.host, tcp.port))
        assert (await _phone_register(asleep)).status == 200
        await asleep.close()  # the phone sleeps: its connection is gone
        async with await SipClient.connect("udp", (udp.host, udp.port)) as alice:
            call = _invite(alice)
            alice.send(call)
            while (await alice.receive()).status != 110:  # type: ignore[union-attr]
                pass
            assert daemon.proxy is not None and daemon.proxy.held_calls == 1

            stopping = asyncio.create_task(daemon.stop(60))
            await asyncio.sleep(0)  # stop() begins: new calls are refused from now on
            alice.send(_invite(alice))
            refused = await alice.final_response()
            assert refused.status == 503 and refused.headers.get("Retry-After")

            async with await SipClient.connect("tcp", (tcp.host, tcp.port)) as awake:
                assert (await _phone_register(awake)).status == 200  # the push woke it
                forwarded = await awake.next_request("INVITE")
                assert forwarded.call_id == call.call_id
                awake.answer(forwarded, 200)
                answered = await alice.final_response()
                assert answered.status == 200 and answered.call_id == call.call_id
            await asyncio.wait_for(stopping, 10)  # the held call ended: no need for the grace
    finally:
        if stopping is None:
            await daemon.stop(0)
        elif not stopping.done():
            await stopping


@pytest.mark.asyncio
async def test_admin_port_in_use_is_a_start_failure(tmp_path: Path, systemd: Systemd) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        config = _config(tmp_path, free_port(), busy.getsockname()[1])
        config_path = tmp_path / "sipushd.yaml"
        config_path.write_text(yaml.safe_dump(config))
        log_path = tmp_path / "sipushd.log"
        env = {**os.environ, "NOTIFY_SOCKET": systemd.path}
        process = _spawn(config_path, log_path, env)
        status = await asyncio.to_thread(process.wait, 20)
    log = log_path.read_text()
    assert status == 1, log
    assert "cannot start" in log
    with pytest.raises(TimeoutError):
        await systemd.next(timeout=0.1)  # never READY=1


async def _server_certificate(host: str, port: int) -> bytes:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # only looking at which certificate is served
    _, writer = await asyncio.open_connection(host, port, ssl=context)
    certificate = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        await writer.wait_closed()
    assert isinstance(certificate, bytes)
    return certificate


@pytest.mark.asyncio
async def test_reload_serves_a_renewed_tls_certificate(tmp_path: Path) -> None:
    first = ensure_server_credentials(tmp_path / "first")
    second = ensure_server_credentials(tmp_path / "second")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first.cert_file, cert)
    shutil.copy(first.key_file, key)
    sip = {
        "domains": [REALM],
        "listen": ["tls:127.0.0.1:0"],
        "tls": {"cert_file": str(cert), "key_file": str(key)},
    }
    daemon = Daemon(_in_process(tmp_path, sip=sip))
    await daemon.start()
    try:
        [listener] = daemon.listeners
        before = await _server_certificate(listener.host, listener.port)
        assert before == _der(first.cert_file)
        shutil.copy(second.cert_file, cert)
        shutil.copy(second.key_file, key)
        await daemon.reload(_in_process(tmp_path, sip=sip))
        after = await _server_certificate(listener.host, listener.port)
        assert after == _der(second.cert_file)
    finally:
        await daemon.stop(0)


def _der(path: Path) -> bytes:
    """The first certificate of a PEM chain file, DER-encoded."""
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(path.read_text().split(end)[0] + end + "\n")


@pytest.mark.asyncio
async def test_sighup_good_then_broken_file_while_a_call_is_held(tmp_path: Path) -> None:
    raw: dict[str, Any] = {
        "sip": {"domains": [REALM], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
        "storage": {"sqlite": {"path": str(tmp_path / "db.sqlite")}},
        "admin": {"listen": "127.0.0.1:0"},
        "push": {"mock": {"enabled": True}},
    }
    path = tmp_path / "sipushd.yaml"
    path.write_text(yaml.safe_dump(raw))
    daemon = Daemon(load_config(path))
    await daemon.start()
    udp, tcp = (next(e for e in daemon.listeners if e.transport == t) for t in ("udp", "tcp"))
    try:
        asleep = await SipClient.connect("tcp", (tcp.host, tcp.port))
        assert (await _phone_register(asleep)).status == 200
        await asleep.close()
        async with await SipClient.connect("udp", (udp.host, udp.port)) as alice:
            call = _invite(alice)
            alice.send(call)
            while (await alice.receive()).status != 110:  # type: ignore[union-attr]
                pass
            assert daemon.proxy is not None and daemon.proxy.held_calls == 1

            path.write_text(yaml.safe_dump(raw | {"routing": {"call_timeout": 45}}))
            await reload_config_file(daemon, path)  # SIGHUP with a good file
            assert daemon.proxy.settings.call_timeout == 45
            path.write_text("routing: {call_timeout: [\n")
            await reload_config_file(
                daemon, path
            )  # SIGHUP with a broken file: the old config stays
            assert daemon.proxy.settings.call_timeout == 45
            assert daemon.proxy.held_calls == 1  # neither reload dropped the held call

            async with await SipClient.connect("tcp", (tcp.host, tcp.port)) as awake:
                assert (await _phone_register(awake)).status == 200
                forwarded = await awake.next_request("INVITE")
                assert forwarded.call_id == call.call_id
                awake.answer(forwarded, 200)
                answered = await alice.final_response()
                assert answered.status == 200 and answered.call_id == call.call_id
    finally:
        await daemon.stop(0)
