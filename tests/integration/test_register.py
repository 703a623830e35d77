"""REGISTER on real loopback sockets: bindings, expiry, digest auth, push params, restart.

Each test runs an in-process `Daemon` (RFC 3261 §10.3, RFC 8599, RFC 7616 / RFC 8760)
and talks to it with the shipped test UA over UDP or TCP.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from sipushd.app import Daemon
from sipushd.config import Config
from sipushd.core.auth import Authenticator
from sipushd.core.binding import Binding
from sipushd.sip import Challenge, Request, Response
from sipushd.sip.digest import digest_response, ha1
from sipushd.testing.ua import SipClient
from sipushd.users import set_user

REALM = "example.org"
PASSWORD = "correct horse"
SECRET = "integration-nonce-secret-0123456789"
AOR = "sip:alice@example.org"
APNS = "pn-provider=apns.dev;pn-param=ABCD1234.org.example.app.voip%26remote"
TRANSPORTS = pytest.mark.parametrize("transport", ["udp", "tcp"])


def make_config(tmp_path: Path, **overrides: dict[str, Any]) -> Config:
    """A loopback config; `overrides` replace keys inside sections."""
    raw: dict[str, Any] = {
        "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0", "tcp:127.0.0.1:0"]},
        "storage": {"sqlite": {"path": str(tmp_path / "bindings.db")}},
        "admin": {"listen": "127.0.0.1:0"},
        "logging": {"level": "warning"},
    }
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    return Config.model_validate(raw)


def auth_config(tmp_path: Path, **values: Any) -> dict[str, Any]:
    """An `auth:` section with alice in a fresh users file."""
    users = tmp_path / "users.yaml"
    set_user(users, REALM, "alice", PASSWORD)
    return {"enabled": True, "realm": REALM, "users_file": str(users), "secret": SECRET, **values}


@asynccontextmanager
async def running(config: Config) -> AsyncIterator[Daemon]:
    daemon = Daemon(config)
    await daemon.start()
    try:
        yield daemon
    finally:
        await daemon.stop(0)


@asynccontextmanager
async def phone(daemon: Daemon, transport: str = "udp") -> AsyncIterator[SipClient]:
    endpoint = next(e for e in daemon.listeners if e.transport == transport)
    async with await SipClient.connect(transport, (endpoint.host, endpoint.port)) as ua:
        yield ua


def contact(ua: SipClient, params: str = "", *, user: str = "alice", port: int = 0) -> str:
    """A Contact URI that reaches `ua` (another `port` makes a different binding)."""
    host, own_port = ua.local
    extra = f";{params}" if params else ""
    return f"<sip:{user}@{host}:{port or own_port};transport={ua.transport_name}{extra}>"


def instance(n: int) -> str:
    return f'+sip.instance="<urn:uuid:00000000-0000-4000-8000-{n:012d}>"'


def register_request(
    ua: SipClient,
    contacts: Sequence[str] = (),
    *,
    expires: int | None = None,
    user: str = "alice",
    domain: str = "example.org",
    headers: Sequence[tuple[str, str]] = (),
    cseq: int | None = None,
) -> Request:
    items = [("Contact", value) for value in contacts]
    if expires is not None:
        items.append(("Expires", str(expires)))
    aor = f"sip:{user}@{domain}"
    return ua.build("REGISTER", f"sip:{domain}", [*items, *headers], to=aor, from_=aor, cseq=cseq)


async def register(ua: SipClient, contacts: Sequence[str] = (), **kwargs: Any) -> Response:
    """Send one REGISTER and wait for its final response."""
    ua.send(register_request(ua, contacts, **kwargs))
    return await ua.final_response()


def authorization(
    challenge: Challenge, uri: str, *, user: str = "alice", password: str = PASSWORD
) -> str:
    """Digest credentials answering `challenge` (RFC 7616 §3.4, qop=auth)."""
    algorithm = challenge.param("algorithm") or "MD5"
    realm, nonce = challenge.param("realm") or "", challenge.param("nonce") or ""
    cnonce, nc = secrets.token_hex(8), "00000001"
    secret = ha1(user, realm, password, algorithm)
    response = digest_response(secret, "REGISTER", uri, nonce, nc, cnonce, "auth", algorithm)
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{uri}", '
        f'response="{response}", algorithm={algorithm}, cnonce="{cnonce}", nc={nc}, qop=auth'
    )


def pick(response: Response, algorithm: str) -> Challenge:
    return next(c for c in response.www_authenticate if c.param("algorithm") == algorithm)


async def stored(daemon: Daemon, aor: str = AOR) -> list[Binding]:
    assert daemon.store is not None
    return await daemon.store.get(aor, time.time())


def listed(response: Response) -> dict[str, int]:
    """Contact URI -> expires of a 2xx (RFC 3261 §10.3 step 8)."""
    out: dict[str, int] = {}
    for item in response.contacts:
        assert item.expires is not None, f"Contact without expires: {item}"
        out[str(item.uri)] = item.expires
    return out


def near(value: int, expected: int) -> bool:
    """`expires` counts down between the decision and the assertion: allow a few seconds."""
    return expected - 5 <= value <= expected


# --- bindings: add, refresh, remove, list ---------------------------------------------------


@pytest.mark.asyncio
@TRANSPORTS
async def test_register_refresh_and_unregister(tmp_path: Path, transport: str) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon, transport) as ua:
        mine = contact(ua)
        first = await register(ua, [mine], expires=600)
        assert first.status == 200
        assert [near(e, 600) for e in listed(first).values()] == [True]
        [binding] = await stored(daemon)
        assert binding.flow.transport == transport
        assert binding.cseq == 1

        refreshed = await register(ua, [mine], expires=1200)  # same Call-ID, higher CSeq
        assert refreshed.status == 200
        assert [near(e, 1200) for e in listed(refreshed).values()] == [True]
        [binding] = await stored(daemon)
        assert binding.cseq == 2

        gone = await register(ua, [mine], expires=0)
        assert gone.status == 200
        assert gone.contacts == []
        assert await stored(daemon) == []


@pytest.mark.asyncio
@TRANSPORTS
async def test_200_lists_every_binding_with_its_remaining_expires(
    tmp_path: Path, transport: str
) -> None:
    async with (
        running(make_config(tmp_path)) as daemon,
        phone(daemon, transport) as desk,
        phone(daemon, transport) as mobile,
    ):
        assert (await register(desk, [contact(desk)], expires=3600)).status == 200
        second = await register(mobile, [f"{contact(mobile)};expires=900"], expires=3600)
        query = await register(mobile)  # §10.3 step 8: no Contact = list the bindings
    for response in (second, query):
        assert response.status == 200
        expires = listed(response)
        assert len(expires) == 2
        assert near(expires[contact(desk).strip("<>")], 3600)
        assert near(expires[contact(mobile).strip("<>")], 900)


@pytest.mark.asyncio
async def test_out_of_order_cseq_on_the_same_call_id_gets_500(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon) as ua:
        assert (await register(ua, [contact(ua)], expires=600, cseq=5)).status == 200
        late = await register(ua, [contact(ua)], expires=300, cseq=4)  # §10.3 step 7
        assert late.status == 500
        [binding] = await stored(daemon)
        assert binding.cseq == 5


@pytest.mark.asyncio
@TRANSPORTS
async def test_wildcard_contact_removes_every_binding(tmp_path: Path, transport: str) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon, transport) as ua:
        two = [contact(ua), contact(ua, port=40000)]
        assert len(listed(await register(ua, two, expires=600))) == 2
        without_zero = await register(ua, ["*"], expires=600)
        assert without_zero.status == 400  # §10.3 step 6: "*" only with Expires: 0
        assert len(await stored(daemon)) == 2
        cleared = await register(ua, ["*"], expires=0)
        assert cleared.status == 200
        assert cleared.contacts == []
        assert await stored(daemon) == []


@pytest.mark.asyncio
async def test_too_brief_interval_gets_423_with_min_expires(tmp_path: Path) -> None:
    config = make_config(tmp_path, registrar={"min_expires": 120})
    async with running(config) as daemon, phone(daemon) as ua:
        response = await register(ua, [contact(ua)], expires=30)
        assert response.status == 423
        assert response.headers.get("Min-Expires") == "120"
        assert await stored(daemon) == []
        retried = await register(ua, [contact(ua)], expires=120)
        assert retried.status == 200


# --- digest authentication ------------------------------------------------------------------


@pytest.mark.asyncio
@TRANSPORTS
@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
async def test_challenge_then_200_with_digest(
    tmp_path: Path, transport: str, algorithm: str
) -> None:
    config = make_config(tmp_path, auth=auth_config(tmp_path))
    async with running(config) as daemon, phone(daemon, transport) as ua:
        first = await register(ua, [contact(ua)], expires=600)
        assert first.status == 401
        offered = [c.param("algorithm") for c in first.www_authenticate]
        assert offered == ["SHA-256", "MD5"]  # RFC 8760 §2.4: strongest first
        assert await stored(daemon) == []
        answer = authorization(pick(first, algorithm), "sip:example.org")
        second = await register(ua, [contact(ua)], expires=600, headers=[("Authorization", answer)])
        assert second.status == 200
        assert len(await stored(daemon)) == 1


@pytest.mark.asyncio
async def test_expired_nonce_gets_401_with_stale_true(tmp_path: Path) -> None:
    ttl = 10
    config = make_config(tmp_path, auth=auth_config(tmp_path, nonce_ttl=ttl))
    old = Authenticator(REALM, SECRET.encode(), nonce_ttl=ttl).make_nonce(time.time() - ttl - 1)
    challenge = Challenge("Digest", (("realm", REALM), ("nonce", old), ("algorithm", "SHA-256")))
    async with running(config) as daemon, phone(daemon) as ua:
        answer = authorization(challenge, "sip:example.org")
        response = await register(ua, [contact(ua)], headers=[("Authorization", answer)])
        assert response.status == 401
        assert all(c.param("stale") == "true" for c in response.www_authenticate)
        fresh = authorization(pick(response, "SHA-256"), "sip:example.org")
        retried = await register(ua, [contact(ua)], headers=[("Authorization", fresh)])
        assert retried.status == 200


@pytest.mark.asyncio
async def test_wrong_password_gets_a_fresh_challenge(tmp_path: Path) -> None:
    config = make_config(tmp_path, auth=auth_config(tmp_path))
    async with running(config) as daemon, phone(daemon) as ua:
        first = await register(ua, [contact(ua)])
        answer = authorization(pick(first, "SHA-256"), "sip:example.org", password="guess")
        second = await register(ua, [contact(ua)], headers=[("Authorization", answer)])
        assert second.status == 401
        assert not any(c.param("stale") for c in second.www_authenticate)
        assert await stored(daemon) == []


@pytest.mark.asyncio
async def test_authenticated_user_cannot_register_someone_else(tmp_path: Path) -> None:
    config = make_config(tmp_path, auth=auth_config(tmp_path))
    async with running(config) as daemon, phone(daemon) as ua:
        first = await register(ua, [contact(ua, user="bob")], user="bob")
        answer = authorization(pick(first, "SHA-256"), "sip:example.org")  # alice's password
        response = await register(
            ua, [contact(ua, user="bob")], user="bob", headers=[("Authorization", answer)]
        )
        assert response.status == 403  # §10.3 step 4
        assert await stored(daemon, "sip:bob@example.org") == []


@pytest.mark.asyncio
async def test_trusted_network_registers_without_a_challenge(tmp_path: Path) -> None:
    auth = auth_config(tmp_path, trusted_networks=["127.0.0.0/8"])
    async with running(make_config(tmp_path, auth=auth)) as daemon, phone(daemon) as ua:
        response = await register(ua, [contact(ua)], expires=600)
        assert response.status == 200
        assert len(await stored(daemon)) == 1


@pytest.mark.asyncio
async def test_repeated_failures_are_refused_by_the_throttle(tmp_path: Path) -> None:
    auth = auth_config(tmp_path, max_failures=3, block_seconds=60)
    async with running(make_config(tmp_path, auth=auth)) as daemon, phone(daemon) as ua:
        response = await register(ua, [contact(ua)])
        statuses = []
        for _ in range(3):
            answer = authorization(pick(response, "MD5"), "sip:example.org", password="guess")
            response = await register(ua, [contact(ua)], headers=[("Authorization", answer)])
            statuses.append(response.status)
            if response.status != 401:
                break
        assert statuses == [401, 401, 403]
        # Blocked: even a bare REGISTER, or a right password on an old nonce, is refused.
        assert (await register(ua, [contact(ua)])).status == 403
        assert await stored(daemon) == []


# --- domains and push parameters ------------------------------------------------------------


@pytest.mark.asyncio
@pytest.mark.parametrize("with_auth", [False, True])
async def test_another_domain_gets_403(tmp_path: Path, with_auth: bool) -> None:
    sections = {"auth": auth_config(tmp_path)} if with_auth else {}
    async with running(make_config(tmp_path, **sections)) as daemon, phone(daemon) as ua:
        response = await register(ua, [contact(ua)], domain="elsewhere.net")
        assert response.status == 403  # §10.3 step 1, before any challenge
        assert not response.www_authenticate
        assert await stored(daemon, "sip:alice@elsewhere.net") == []


@pytest.mark.asyncio
async def test_push_provider_without_credentials_gets_555(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon) as ua:
        push = f"{APNS};pn-prid=00aa11bb:voip%2622cc33dd:remote"
        response = await register(ua, [contact(ua, push)], expires=600)
        assert response.status == 555  # RFC 8599 §5.6.1
        assert await stored(daemon) == []


@pytest.mark.asyncio
@TRANSPORTS
async def test_push_register_gets_feature_caps(tmp_path: Path, transport: str) -> None:
    config = make_config(tmp_path, push={"mock": {"enabled": True}})
    async with running(config) as daemon, phone(daemon, transport) as ua:
        push = "pn-provider=apns;pn-param=ABCD1234.org.example.app.voip;pn-prid=00aa11bb"
        response = await register(ua, [f"{contact(ua, push)};{instance(1)}"], expires=600)
        assert response.status == 200
        assert response.headers.get_all("Feature-Caps") == ['*;+sip.pns="apns"']
        [binding] = await stored(daemon)
        assert binding.push is not None
        assert (binding.push.provider, binding.push.app_id) == ("apns", "org.example.app")
        assert binding.push.voip_token == "00aa11bb"


@pytest.mark.asyncio
async def test_pnsreg_is_answered_with_the_refresh_interval(tmp_path: Path) -> None:
    config = make_config(tmp_path, push={"mock": {"enabled": True}})
    async with running(config) as daemon, phone(daemon) as ua:
        push = f"{APNS};pn-prid=00aa11bb:voip%2622cc33dd:remote"
        value = f"{contact(ua, push)};{instance(1)};+sip.pnsreg"
        response = await register(ua, [value], expires=600)
        assert response.status == 200
        [caps] = response.headers.get_all("Feature-Caps")
        assert caps.startswith('*;+sip.pns="apns.dev";+sip.pnsreg="')
        assert int(caps.rsplit('"', 2)[1]) > 120  # RFC 8599 §4.1.4
        [binding] = await stored(daemon)
        assert binding.pnsreg


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ("pn-provider=apns;pn-param=nodots;pn-prid=00aa11bb", "TEAMID.bundle-id"),
        (f"{APNS};pn-prid=00aa11bb:voip", "declares 2 service(s)"),
        ("pn-param=ABCD1234.org.example.app;pn-prid=00aa11bb", "without pn-provider"),
        (f"{APNS};pn-prid=00aa11bb:voip%2622cc33dd:video", "unknown push service 'video'"),
        ("pn-provider=fcm;pn-prid=fcmtoken", "missing pn-param for fcm"),
    ],
)
async def test_malformed_push_params_get_400_naming_the_problem(
    tmp_path: Path, params: str, problem: str
) -> None:
    config = make_config(tmp_path, push={"mock": {"enabled": True}})
    async with running(config) as daemon, phone(daemon) as ua:
        response = await register(ua, [contact(ua, params)], expires=600)
        assert response.status == 400
        assert problem in response.reason
        assert await stored(daemon) == []


@pytest.mark.asyncio
async def test_same_instance_with_a_new_contact_replaces_the_binding(tmp_path: Path) -> None:
    async with running(make_config(tmp_path)) as daemon, phone(daemon) as old, phone(daemon) as new:
        assert (await register(old, [f"{contact(old)};{instance(7)}"], expires=600)).status == 200
        response = await register(new, [f"{contact(new)};{instance(7)}"], expires=600)
        assert list(listed(response)) == [contact(new).strip("<>")]
        [binding] = await stored(daemon)
        assert binding.contact == contact(new).strip("<>")
        assert binding.instance == "<urn:uuid:00000000-0000-4000-8000-000000000007>"


@pytest.mark.asyncio
async def test_same_push_token_under_a_new_instance_replaces_the_binding(tmp_path: Path) -> None:
    config = make_config(tmp_path, push={"mock": {"enabled": True}})
    push = f"{APNS};pn-prid=00aa11bb:voip%2622cc33dd:remote"
    async with running(config) as daemon, phone(daemon) as old, phone(daemon) as new:
        assert (await register(old, [f"{contact(old, push)};{instance(1)}"])).status == 200
        # The app was reinstalled: new instance id, same device token.
        response = await register(new, [f"{contact(new, push)};{instance(2)}"])
        assert response.status == 200
        assert len(response.contacts) == 1
        [binding] = await stored(daemon)
        assert binding.instance == "<urn:uuid:00000000-0000-4000-8000-000000000002>"
        assert binding.tokens == {"00aa11bb", "22cc33dd"}


@pytest.mark.asyncio
async def test_bindings_survive_a_restart(tmp_path: Path) -> None:
    config = make_config(tmp_path, push={"mock": {"enabled": True}})
    push = f"{APNS};pn-prid=00aa11bb:voip%2622cc33dd:remote"
    async with running(config) as daemon, phone(daemon, "tcp") as ua:
        value = f"{contact(ua, push)};{instance(3)}"
        assert (await register(ua, [value], expires=3600)).status == 200
        [before] = await stored(daemon)
    async with running(config) as daemon, phone(daemon) as ua:
        query = await register(ua)
        [after] = await stored(daemon)
    assert query.status == 200
    assert list(listed(query)) == [before.contact]
    assert near(next(iter(listed(query).values())), 3600)
    assert after.flow.flow is None  # the connection belonged to the old process
    assert (after.key, after.push, after.expires_at) == (before.key, before.push, before.expires_at)
