"""Headers container and typed header values (Via, NameAddr, CSeq, auth)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipushd.sip import (
    Challenge,
    Credentials,
    CSeq,
    Headers,
    NameAddr,
    SipParseError,
    Via,
    parse_uri,
)
from sipushd.sip.headers import (
    _generic_params,
    parse_challenge,
    parse_credentials,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_via,
    split_list,
)


def test_headers_case_insensitive_ordered_duplicates() -> None:
    h = Headers([("Via", "a"), ("X-Foo", "1"), ("via", "b"), ("m", "<sip:x@y>")])
    assert list(h) == [("Via", "a"), ("X-Foo", "1"), ("Via", "b"), ("Contact", "<sip:x@y>")]
    assert h.get("VIA") == "a" and h.get("v") == "a"
    assert h.get_all("via") == ["a", "b"]
    assert h.get("x-foo") == "1" and h.get("missing") is None
    assert "contact" in h and "m" in h and "Route" not in h
    assert len(h) == 4
    assert h == Headers([("v", "a"), ("x-foo", "1"), ("Via", "b"), ("Contact", "<sip:x@y>")])
    assert h != Headers([("Via", "b"), ("X-Foo", "1"), ("Via", "a"), ("Contact", "<sip:x@y>")])
    assert hash(h) == hash(Headers(list(h)))


def test_headers_are_immutable_copies() -> None:
    h = Headers([("Via", "a"), ("To", "t"), ("Via", "b")])
    assert list(h.add("Via", "c")) == [("Via", "a"), ("To", "t"), ("Via", "b"), ("Via", "c")]
    assert h.prepend("via", "z").get_all("Via") == ["z", "a", "b"]
    assert list(h.set("VIA", "only")) == [("Via", "only"), ("To", "t")]
    assert list(h.set("Route", "<sip:r>"))[-1] == ("Route", "<sip:r>")
    assert list(h.remove("v")) == [("To", "t")]
    assert h.get_all("Via") == ["a", "b"]


def test_headers_reject_bad_names_and_values() -> None:
    with pytest.raises(ValueError):
        Headers([("Bad Name", "x")])
    with pytest.raises(ValueError):
        Headers([("X", "a\r\nInjected: 1")])
    with pytest.raises(ValueError):
        Headers().add("X", "a\nb")
    for bad in ("a\rb", "a\x00b", "\n"):
        with pytest.raises(ValueError):
            Headers([("X", bad)])


def test_values_split_respects_quotes_and_angle_brackets() -> None:
    h = Headers(
        [
            ("Contact", '"Doe, John" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>'),
            ("Contact", "sip:z@w"),
            ("Supported", "path, outbound ,gruu"),
            ("Supported", ""),
        ]
    )
    assert h.values("Contact") == ['"Doe, John" <sip:j@x;a=1,2>;q=0.5', "<sip:k@y>", "sip:z@w"]
    assert h.values("Supported") == ["path", "outbound", "gruu"]
    assert split_list('a;p="x\\",y", b') == ['a;p="x\\",y"', "b"]
    with pytest.raises(SipParseError):
        split_list('a;p="unterminated, b')
    with pytest.raises(SipParseError):
        split_list("a,,b")


def test_via() -> None:
    v = parse_via("SIP / 2.0 / udp Host.Example.COM:5062 ;branch=z9hG4bK1; received=1.2.3.4;rport")
    assert (v.transport, v.host, v.port) == ("UDP", "host.example.com", 5062)
    assert (v.branch, v.received, v.rport) == ("z9hG4bK1", "1.2.3.4", "")
    assert parse_via("SIP/2.0/TCP [2001:db8::1];rport=5070").rport == "5070"
    assert parse_via("SIP/2.0/TLS a.b").rport is None
    flags = parse_via("SIP/2.0/TLS a.b;branch;received")
    assert (flags.branch, flags.received, flags.rport) == ("", "", None)
    v2 = v.with_param("received", "5.6.7.8").with_param("rport", "1234")
    assert (
        str(v2) == "SIP/2.0/UDP host.example.com:5062;branch=z9hG4bK1;received=5.6.7.8;rport=1234"
    )
    assert str(Via("WSS", "x.invalid", None, (("branch", "z9hG4bKa"),))) == (
        "SIP/2.0/WSS x.invalid;branch=z9hG4bKa"
    )
    assert parse_via(str(v2)) == v2


@pytest.mark.parametrize(
    "text",
    [
        "SIP/2.0/UDP",
        "SIP/3.0/UDP host",
        "HTTP/2.0/UDP host",
        "SIP/2.0/UDP host:99999",
        "SIP/2.0/UDP host;;branch=x",
        "SIP/2.0/UDP host;branch=x;",
        'SIP/2.0/UDP host;branch="x',
        "SIP/2.0/UDP host garbage",
    ],
)
def test_bad_via(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_via(text)


def test_name_addr_forms() -> None:
    a = parse_name_addr('"Alice \\"A\\" Smith" <sip:alice@example.org;transport=tcp>;tag=x1')
    assert a.display_name == 'Alice "A" Smith'
    assert a.uri.param("transport") == "tcp"
    assert a.tag == "x1"
    assert str(a) == '"Alice \\"A\\" Smith" <sip:alice@example.org;transport=tcp>;tag=x1'
    b = parse_name_addr("Bob Jones  <sip:bob@example.org>")
    assert b.display_name == "Bob Jones"
    c = parse_name_addr("<sip:c@example.org>")
    assert c.display_name is None and c.params == ()


def test_addr_spec_params_are_header_params() -> None:
    # RFC 3261 §20: without <>, everything after the first ';' belongs to the header.
    a = parse_name_addr("sip:alice@example.org;tag=abc;transport=tcp")
    assert a.uri == parse_uri("sip:alice@example.org")
    assert a.params == (("tag", "abc"), ("transport", "tcp"))
    assert str(a) == "<sip:alice@example.org>;tag=abc;transport=tcp"


def test_contact_params() -> None:
    c = parse_name_addr(
        '<sip:a@b>;+sip.instance="<urn:uuid:1234>";reg-id=2;expires=60;q=0.7;+sip.pnsreg'
    )
    assert c.instance == "<urn:uuid:1234>"
    assert c.param("+sip.instance") == '"<urn:uuid:1234>"'
    assert (c.reg_id, c.expires, c.q) == (2, 60, 0.7)
    assert c.has_param("+sip.pnsreg") and c.param("+sip.pnsreg") is None
    # Setting a parameter replaces it where it is.
    assert str(c.with_param("EXPIRES", "0")).endswith(";reg-id=2;expires=0;q=0.7;+sip.pnsreg")
    assert str(c.with_param("gr")).endswith(";+sip.pnsreg;gr")
    bare = parse_name_addr("<sip:a@b>")
    assert (bare.instance, bare.reg_id, bare.expires, bare.q) == (None, None, None, None)
    assert NameAddr(None, parse_uri("sip:a@b")).with_param("tag", "t").tag == "t"


@pytest.mark.parametrize(
    "param", ["q=2", "q=0.1234", "expires=-1", "expires=4294967296", "reg-id=x"]
)
def test_bad_contact_params(param: str) -> None:
    c = parse_name_addr(f"<sip:a@b>;{param}")
    with pytest.raises(SipParseError):
        _ = c.q, c.expires, c.reg_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        '"unterminated <sip:a@b>',
        '"Alice" sip:a@b',
        "<sip:a@b",
        "<sip:a@b>;;tag=1",
        "<sip:a@b> trailing",
        "Alice sip:a@b",
        '<sip:a@b>;tag="x',
        "<not a uri>",
    ],
)
def test_bad_name_addr(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_name_addr(text)


def test_cseq() -> None:
    assert parse_cseq(" 4711  INVITE ") == CSeq(4711, "INVITE")
    assert str(CSeq(1, "REGISTER")) == "1 REGISTER"
    for bad in ("INVITE", "1", "-1 INVITE", "4294967296 INVITE", "1 INVITE x", "1x INVITE"):
        with pytest.raises(SipParseError):
            parse_cseq(bad)


def test_credentials_and_challenge() -> None:
    cred = parse_credentials(
        'Digest username="alice", realm="example.org", nonce="abc", '
        'uri="sip:example.org", response="0123", algorithm=SHA-256, '
        'qop=auth, nc=00000001, cnonce="xyz", opaque="o\\"q"'
    )
    assert cred.scheme == "Digest"
    assert cred.param("USERNAME") == "alice"
    assert cred.param("opaque") == 'o"q'
    assert cred.param("missing") is None
    assert str(cred) == (
        'Digest username="alice", realm="example.org", nonce="abc", uri="sip:example.org", '
        'response="0123", algorithm=SHA-256, qop=auth, nc=00000001, cnonce="xyz", '
        'opaque="o\\"q"'
    )
    assert parse_credentials(str(cred)) == cred
    ch = Challenge("Digest", (("realm", "r"), ("nonce", "n"), ("qop", "auth"), ("stale", "true")))
    assert str(ch) == 'Digest realm="r", nonce="n", qop="auth", stale=true'
    assert parse_challenge(str(ch)) == ch
    assert str(Credentials("Digest", (("algorithm", "MD5"),))) == "Digest algorithm=MD5"
    for bad in ("", 'Digest realm="x', "Digest realm=x,", "Digest realm=x nonce=y", "Digest ,"):
        with pytest.raises(SipParseError):
            parse_credentials(bad)


_NAMES = st.text(alphabet="abcXYZ019-.!%*_+`'~", min_size=1, max_size=8)
_VALUES = st.one_of(
    st.none(),
    st.text(alphabet="abcXYZ019-.:<>@/", min_size=1, max_size=12),
    st.text(alphabet="ab c;,:<>@=\t", max_size=12).map(lambda v: f'"{v}"'),
)


@given(st.lists(st.tuples(_NAMES, _VALUES), min_size=1, max_size=5))
def test_the_split_fast_path_reads_params_as_the_grammar_does(
    params: list[tuple[str, str | None]],
) -> None:
    text = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    assert parse_params(text) == _generic_params(text, 0)
    assert parse_params(text) == tuple((n.lower(), v) for n, v in params)
