"""Authenticator flows with time stepped by hand, throttling, trusted networks."""

from __future__ import annotations

import ipaddress
import re

import pytest

from sipushd.core.auth import (
    Authenticator,
    AuthOutcome,
    FailureThrottle,
    UserRecord,
    is_trusted,
    parse_networks,
)
from sipushd.sip import Request, parse_message
from sipushd.sip.digest import digest_response, ha1

REALM = "example.org"
USERS = {"alice": UserRecord.from_password("alice", REALM, "secret")}
URI = "sip:example.org"


def make_auth(nonce_ttl: float = 300.0, max_nonces: int = 100_000) -> Authenticator:
    return Authenticator(REALM, b"k" * 32, nonce_ttl=nonce_ttl, max_nonces=max_nonces)


def tampered(nonce: str) -> str:
    swap = "B" if nonce[20] == "A" else "A"
    return nonce[:20] + swap + nonce[21:]


def nonce_of(challenge: str) -> str:
    match = re.search(r'nonce="([^"]+)"', challenge)
    assert match is not None
    return match.group(1)


def authorization(
    nonce: str,
    *,
    user: str = "alice",
    password: str = "secret",
    nc: int = 1,
    algorithm: str = "SHA-256",
    realm: str = REALM,
    method: str = "REGISTER",
    cnonce: str = "0a4f113b",
) -> str:
    h1 = ha1(user, realm, password, algorithm)
    ncs = f"{nc:08x}"
    response = digest_response(h1, method, URI, nonce, ncs, cnonce, "auth", algorithm)
    return (
        f'Digest username="{user}", realm="{realm}", nonce="{nonce}", uri="{URI}", '
        f'response="{response}", algorithm={algorithm}, qop=auth, nc={ncs}, cnonce="{cnonce}"'
    )


def test_challenge_offers_sha256_then_md5() -> None:
    values = make_auth().challenge(1000.0)
    assert len(values) == 2
    assert "algorithm=SHA-256" in values[0] and "algorithm=MD5" in values[1]
    assert all(f'realm="{REALM}"' in v and 'qop="auth"' in v for v in values)
    assert "stale" not in values[0]
    assert all("stale=true" in v for v in make_auth().challenge(1000.0, stale=True))


def test_nonces_differ_and_carry_their_issue_time() -> None:
    auth = make_auth()
    a, b = auth.make_nonce(1000.5), auth.make_nonce(1000.5)
    assert a != b
    assert auth.nonce_issued_at(a) == 1000.5


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5"])
def test_ok(algorithm: str) -> None:
    auth = make_auth()
    nonce = nonce_of(auth.challenge(1000.0)[0])
    result = auth.verify("REGISTER", authorization(nonce, algorithm=algorithm), USERS, now=1001.0)
    assert result.ok and result.username == "alice"
    assert result.outcome is AuthOutcome.OK


def test_missing_credentials() -> None:
    auth = make_auth()
    assert auth.verify("REGISTER", None, USERS, 0.0).outcome is AuthOutcome.MISSING
    assert auth.verify("REGISTER", [], USERS, 0.0).outcome is AuthOutcome.MISSING


def test_credentials_for_another_realm_are_skipped() -> None:
    auth = make_auth()
    nonce = auth.make_nonce(0.0)
    other = authorization(nonce, realm="other.net")
    assert auth.verify("REGISTER", other, USERS, 1.0).outcome is AuthOutcome.MISSING
    both = [other, authorization(nonce)]
    assert auth.verify("REGISTER", both, USERS, 1.0).ok


def test_stale_after_ttl_only_with_right_password() -> None:
    auth = make_auth(nonce_ttl=300.0)
    nonce = auth.make_nonce(1000.0)
    assert auth.verify("REGISTER", authorization(nonce), USERS, 1299.0).ok
    late = auth.verify("REGISTER", authorization(nonce, nc=2), USERS, 1300.5)
    assert late.stale and late.outcome is AuthOutcome.STALE
    wrong = auth.verify("REGISTER", authorization(nonce, nc=3, password="x"), USERS, 1300.5)
    assert wrong.outcome is AuthOutcome.BAD_PASSWORD


def test_replayed_nonce_count() -> None:
    auth = make_auth()
    nonce = auth.make_nonce(0.0)
    assert auth.verify("REGISTER", authorization(nonce, nc=1), USERS, 1.0).ok
    again = auth.verify("REGISTER", authorization(nonce, nc=1), USERS, 2.0)
    assert again.outcome is AuthOutcome.REPLAY
    assert auth.verify("REGISTER", authorization(nonce, nc=3), USERS, 3.0).ok
    # nc 2 arrives late but was never used: accepted once
    assert auth.verify("REGISTER", authorization(nonce, nc=2), USERS, 4.0).ok
    assert auth.verify("REGISTER", authorization(nonce, nc=2), USERS, 5.0).outcome is (
        AuthOutcome.REPLAY
    )
    assert auth.verify("REGISTER", authorization(nonce, nc=200), USERS, 6.0).ok
    old = auth.verify("REGISTER", authorization(nonce, nc=100), USERS, 7.0)
    assert old.outcome is AuthOutcome.REPLAY


def test_failed_attempt_does_not_burn_a_nonce_count() -> None:
    auth = make_auth()
    nonce = auth.make_nonce(0.0)
    bad = auth.verify("REGISTER", authorization(nonce, password="guess"), USERS, 1.0)
    assert bad.outcome is AuthOutcome.BAD_PASSWORD and bad.counts_as_failure
    assert auth.verify("REGISTER", authorization(nonce), USERS, 2.0).ok


def test_unknown_user() -> None:
    auth = make_auth()
    result = auth.verify("REGISTER", authorization(auth.make_nonce(0.0), user="bob"), USERS, 1.0)
    assert result.outcome is AuthOutcome.UNKNOWN_USER and result.username == "bob"
    assert result.counts_as_failure


def test_wrong_method_is_a_bad_password() -> None:
    auth = make_auth()
    cred = authorization(auth.make_nonce(0.0), method="INVITE")
    assert auth.verify("REGISTER", cred, USERS, 1.0).outcome is AuthOutcome.BAD_PASSWORD


@pytest.mark.parametrize(
    "nonce",
    [
        "garbage",
        "",
        tampered(make_auth().make_nonce(0.0)),
        Authenticator(REALM, b"other-secret").make_nonce(0.0),
        Authenticator("other.realm", b"k" * 32).make_nonce(0.0),
    ],
)
def test_bad_nonce(nonce: str) -> None:
    result = make_auth().verify("REGISTER", authorization(nonce), USERS, 1.0)
    assert result.outcome is AuthOutcome.BAD_NONCE
    assert not result.counts_as_failure


def test_nonce_from_the_far_future_is_bad() -> None:
    auth = make_auth(nonce_ttl=300.0)
    nonce = auth.make_nonce(10_000.0)
    assert auth.verify("REGISTER", authorization(nonce), USERS, 1000.0).outcome is (
        AuthOutcome.BAD_NONCE
    )


def test_malformed_or_unoffered_credentials_are_invalid() -> None:
    auth = make_auth()
    nonce = auth.make_nonce(0.0)
    assert auth.verify("REGISTER", 'Digest username="a"', USERS, 1.0).outcome is (
        AuthOutcome.INVALID
    )
    md5_only = Authenticator(REALM, b"k", algorithms=("MD5",))
    result = md5_only.verify("REGISTER", authorization(nonce), USERS, 1.0)
    assert result.outcome is AuthOutcome.INVALID and "not offered" in result.detail
    no_qop = re.sub(r", qop=auth, nc=\w+, cnonce=\"\w+\"", "", authorization(nonce))
    assert auth.verify("REGISTER", no_qop, USERS, 1.0).outcome is AuthOutcome.INVALID
    zero = authorization(nonce, nc=0)
    assert auth.verify("REGISTER", zero, USERS, 1.0).outcome is AuthOutcome.INVALID


def test_replay_state_is_purged_and_bounded() -> None:
    auth = make_auth(nonce_ttl=10.0, max_nonces=3)
    nonces = [auth.make_nonce(float(i)) for i in range(5)]
    for i, nonce in enumerate(nonces):
        assert auth.verify("REGISTER", authorization(nonce), USERS, 5.0 + i * 0.1).ok
    assert auth.tracked_nonces == 3
    # nonces[0] was pushed out while still valid: stale, never silently trusted
    evicted = auth.verify("REGISTER", authorization(nonces[0], nc=1), USERS, 6.0)
    assert evicted.outcome is AuthOutcome.STALE
    # a fresh nonce is still fine
    assert auth.verify("REGISTER", authorization(auth.make_nonce(6.0)), USERS, 6.0).ok
    auth.purge(100.0)
    assert auth.tracked_nonces == 0


def test_empty_secret_or_unknown_algorithm_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        Authenticator(REALM, b"")
    with pytest.raises(ValueError, match="SHA-512"):
        Authenticator(REALM, b"k", algorithms=("SHA-512",))


def test_user_record_ha1_per_algorithm() -> None:
    record = USERS["alice"]
    assert record.ha1("md5") == ha1("alice", REALM, "secret", "MD5")
    assert record.ha1("SHA-256-sess") == ha1("alice", REALM, "secret", "SHA-256")
    with pytest.raises(ValueError):
        record.ha1("SHA-512-256")


# --- throttling -----------------------------------------------------------------------


def test_throttle_blocks_then_unblocks() -> None:
    throttle = FailureThrottle(max_failures=3, block_seconds=60.0)
    assert not throttle.record_failure("192.0.2.1", 0.0)
    assert not throttle.record_failure("192.0.2.1", 1.0)
    assert not throttle.is_blocked("192.0.2.1", 1.0)
    assert throttle.record_failure("192.0.2.1", 2.0)
    assert throttle.blocks == 1
    assert throttle.is_blocked("192.0.2.1", 2.0)
    assert throttle.is_blocked("192.0.2.1", 61.9)
    assert not throttle.is_blocked("192.0.2.2", 30.0)
    assert throttle.record_failure("192.0.2.1", 30.0)  # still blocked, no new block
    assert throttle.blocks == 1
    assert not throttle.is_blocked("192.0.2.1", 62.0)
    # after the block the count starts again
    assert not throttle.record_failure("192.0.2.1", 62.0)


def test_throttle_forgets_old_failures() -> None:
    throttle = FailureThrottle(max_failures=3, block_seconds=60.0, window=10.0)
    throttle.record_failure("a", 0.0)
    throttle.record_failure("a", 1.0)
    assert not throttle.record_failure("a", 20.0)  # window passed, count restarted
    assert not throttle.is_blocked("a", 20.0)


def test_throttle_success_resets_the_count() -> None:
    throttle = FailureThrottle(max_failures=2, block_seconds=60.0)
    throttle.record_failure("a", 0.0)
    throttle.record_success("a")
    assert not throttle.record_failure("a", 1.0)


def test_throttle_memory_is_bounded_and_purged() -> None:
    throttle = FailureThrottle(max_failures=5, block_seconds=60.0, max_entries=100)
    for i in range(1000):
        throttle.record_failure(f"10.0.{i // 256}.{i % 256}", i * 0.001)
    assert len(throttle) == 100
    throttle.record_failure("x", 1000.0)
    assert len(throttle) == 1


# --- trusted networks ----------------------------------------------------------------


def test_is_trusted() -> None:
    nets = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]
    assert is_trusted("10.1.2.3", nets)
    assert is_trusted("192.0.2.7", nets)
    assert not is_trusted("192.0.2.8", nets)
    assert is_trusted("[2001:db8::1]", nets)
    assert is_trusted("::ffff:10.0.0.1", nets)  # IPv4-mapped
    assert not is_trusted("2001:db9::1", nets)
    assert not is_trusted("not-an-ip", nets)
    assert not is_trusted("10.0.0.1", [])
    parsed = parse_networks(nets)
    assert parsed[0] == ipaddress.ip_network("10.0.0.0/8")
    assert is_trusted("10.9.9.9", parsed)


def test_parse_networks_names_the_bad_entry() -> None:
    with pytest.raises(ValueError, match=r"10\.0\.0\.300"):
        parse_networks(["10.0.0.0/8", "10.0.0.300/8"])


def test_verify_a_parsed_register() -> None:
    auth = make_auth()
    nonce = nonce_of(auth.challenge(1000.0)[1])
    cred = authorization(nonce, algorithm="MD5")
    data = (
        "REGISTER sip:example.org SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK776asdhds\r\n"
        "Max-Forwards: 70\r\n"
        "To: <sip:alice@example.org>\r\n"
        "From: <sip:alice@example.org>;tag=456248\r\n"
        "Call-ID: 843817637684230@998sdasdh09\r\n"
        "CSeq: 1826 REGISTER\r\n"
        "Contact: <sip:alice@192.0.2.1>\r\n"
        f"Authorization: {cred}\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_message(data)
    assert isinstance(request, Request)
    result = auth.verify(request.method, request.authorization, USERS, 1001.0)
    assert result.ok and result.username == "alice"
