"""Digest maths: RFC 2617 §3.5 and RFC 7616 §3.9.1 vectors, challenges, credentials parsing."""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipushd.sip.digest import (
    DigestCredentials,
    build_challenge,
    canonical_algorithm,
    digest_response,
    ha1,
    parse_digest_credentials,
    responses_equal,
    session_ha1,
)
from sipushd.sip.errors import SipParseError

# RFC 2617 §3.5
RFC2617 = {
    "username": "Mufasa",
    "realm": "testrealm@host.com",
    "password": "Circle Of Life",
    "nonce": "dcd98b7102dd2f0e8b11d0f600bfb0c093",
    "uri": "/dir/index.html",
    "nc": "00000001",
    "cnonce": "0a4f113b",
    "response": "6629fae49393a05397450978507c4ef1",
}
# RFC 7616 §3.9.1
RFC7616 = {
    "username": "Mufasa",
    "realm": "http-auth@example.org",
    "password": "Circle of Life",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "uri": "/dir/index.html",
    "nc": "00000001",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "md5": "8ca523f5e9506fed4657c9700eebdbec",
    "sha256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


def test_rfc2617_md5_example() -> None:
    v = RFC2617
    h1 = ha1(v["username"], v["realm"], v["password"], "MD5")
    got = digest_response(h1, "GET", v["uri"], v["nonce"], v["nc"], v["cnonce"], "auth", "MD5")
    assert got == v["response"]


@pytest.mark.parametrize(("algorithm", "key"), [("SHA-256", "sha256"), ("MD5", "md5")])
def test_rfc7616_example(algorithm: str, key: str) -> None:
    v = RFC7616
    h1 = ha1(v["username"], v["realm"], v["password"], algorithm)
    got = digest_response(h1, "GET", v["uri"], v["nonce"], v["nc"], v["cnonce"], "auth", algorithm)
    assert got == v[key]


def test_ha1_is_the_hash_of_user_realm_password() -> None:
    assert ha1("a", "r", "p", "SHA-256") == hashlib.sha256(b"a:r:p").hexdigest()
    assert ha1("a", "r", "p") == hashlib.md5(b"a:r:p").hexdigest()
    assert ha1("a", "r", "p", "sha-256-sess") == ha1("a", "r", "p", "SHA-256")


def test_rfc2069_response_without_qop() -> None:
    h1 = ha1("u", "r", "p")
    h2 = hashlib.md5(b"REGISTER:sip:r").hexdigest()
    expected = hashlib.md5(f"{h1}:n:{h2}".encode()).hexdigest()
    assert digest_response(h1, "REGISTER", "sip:r", "n", None, None, None) == expected


def test_auth_int_hashes_the_body() -> None:
    h1 = ha1("u", "r", "p", "SHA-256")
    body_hash = hashlib.sha256(b"v=0\r\n").hexdigest()
    h2 = hashlib.sha256(f"INVITE:sip:b@r:{body_hash}".encode()).hexdigest()
    expected = hashlib.sha256(f"{h1}:n:00000001:c:auth-int:{h2}".encode()).hexdigest()
    got = digest_response(
        h1, "INVITE", "sip:b@r", "n", "00000001", "c", "auth-int", "SHA-256", b"v=0\r\n"
    )
    assert got == expected
    assert got != digest_response(
        h1, "INVITE", "sip:b@r", "n", "00000001", "c", "auth-int", "SHA-256"
    )


def test_sess_variant_uses_session_key() -> None:
    h1 = ha1("u", "r", "p", "MD5")
    sess = session_ha1(h1, "n", "c", "MD5-sess")
    assert sess == hashlib.md5(f"{h1}:n:c".encode()).hexdigest()
    got = digest_response(h1, "REGISTER", "sip:r", "n", "00000001", "c", "auth", "MD5-sess")
    assert got == digest_response(sess, "REGISTER", "sip:r", "n", "00000001", "c", "auth", "MD5")


def test_unknown_algorithm_raises() -> None:
    with pytest.raises(ValueError, match="SHA-512"):
        ha1("u", "r", "p", "SHA-512")


def test_canonical_algorithm() -> None:
    assert canonical_algorithm(None) == "MD5"
    assert canonical_algorithm("sha-256") == "SHA-256"
    assert canonical_algorithm("md5-SESS") == "MD5-sess"
    assert canonical_algorithm("Foo") == "Foo"


def test_responses_equal() -> None:
    assert responses_equal("ABCDEF", "abcdef")
    assert not responses_equal("abcdef", "abcdee")


def test_build_challenge() -> None:
    value = build_challenge("example.org", "abc", "SHA-256")
    assert value == 'Digest realm="example.org", nonce="abc", algorithm=SHA-256, qop="auth"'
    value = build_challenge('a"b', "n", "md5", opaque="o", stale=True, qop=None)
    assert value == 'Digest realm="a\\"b", nonce="n", opaque="o", stale=true, algorithm=MD5'


AUTH = (
    'Digest username="Mufasa", realm="testrealm@host.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html", qop=auth, '
    'nc=00000001, cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1", '
    'opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)


def test_parse_rfc2617_authorization() -> None:
    c = parse_digest_credentials(AUTH)
    assert c == DigestCredentials(
        username="Mufasa",
        realm="testrealm@host.com",
        nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
        uri="/dir/index.html",
        response="6629fae49393a05397450978507c4ef1",
        algorithm="MD5",
        cnonce="0a4f113b",
        nc="00000001",
        qop="auth",
        opaque="5ccc069c403ebaf9f0171e9517f40e41",
    )
    assert c.nonce_count == 1


def test_parse_tolerates_case_spacing_and_escapes() -> None:
    c = parse_digest_credentials(
        'digest  USERNAME = "a\\"b" ,realm="r",nonce="n",uri="sip:r;transport=tcp",'
        'response="' + "A" * 64 + '",algorithm=sha-256,qop="auth",nc=0000000A,cnonce="c"'
    )
    assert c.username == 'a"b'
    assert c.uri == "sip:r;transport=tcp"
    assert c.algorithm == "SHA-256"
    assert c.response == "a" * 64
    assert c.nonce_count == 10


@dataclass(frozen=True)
class FakeCredentials:
    scheme: str
    params: tuple[tuple[str, str], ...]


def test_parse_accepts_the_message_layer_credentials_object() -> None:
    params = (
        ("username", "alice"),
        ("realm", "r"),
        ("nonce", "n"),
        ("uri", "sip:r"),
        ("response", "0" * 32),
    )
    c = parse_digest_credentials(FakeCredentials("Digest", params))
    assert (c.username, c.qop, c.nc, c.nonce_count) == ("alice", None, None, None)
    with pytest.raises(SipParseError):
        parse_digest_credentials(FakeCredentials("Basic", params))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('Basic dXNlcjpwYXNz"', "scheme"),
        ("Digest", "without username"),
        ('Digest username="a", realm="r", nonce="n", uri="u"', "without response"),
        ('Digest username="a", username="b"', "twice"),
        ('Digest username="a" realm="r"', "malformed"),
        ('Digest username="a, realm="r"', "malformed"),
        ('Digest username="a",', "comma"),
        ('Digest username="a", realm="r", nonce="n", uri="u", response="zz"', "hex"),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="' + "0" * 31 + '"',
            "hex",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="' + "0" * 32 + '", '
            "qop=auth",
            "cnonce",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="' + "0" * 32 + '", '
            'qop=auth, cnonce="c", nc=1',
            "eight hex",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="' + "0" * 32 + '", '
            'qop=auth-conf, cnonce="c", nc=00000001',
            "qop",
        ),
        (
            'Digest username="a", realm="r", nonce="n", uri="u", response="' + "0" * 32 + '", '
            "algorithm=MD5-sess",
            "-sess",
        ),
    ],
)
def test_malformed_credentials(value: str, problem: str) -> None:
    with pytest.raises(SipParseError, match=problem) as info:
        parse_digest_credentials(value)
    assert info.value.status_hint == 400


@given(st.text())
def test_fuzz_only_raises_sip_parse_error(text: str) -> None:
    with contextlib.suppress(SipParseError):
        parse_digest_credentials("Digest " + text)
