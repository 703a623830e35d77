"""URIs: parsing, escaping, serialisation and RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sipushd.sip import SipParseError, SipUri, _abnf, parse_uri
from sipushd.sip.uri import _maybe_bad_chars


def test_sip_uri_parts() -> None:
    u = parse_uri("sip:alice:secret@Example.ORG:5070;transport=TCP;lr?subject=hi&priority=urgent")
    assert u.scheme == "sip"
    assert (u.user, u.password, u.host, u.port) == ("alice", "secret", "example.org", 5070)
    assert u.params == (("transport", "TCP"), ("lr", None))
    assert u.headers == (("subject", "hi"), ("priority", "urgent"))
    assert u.opaque is None
    assert u.param("TRANSPORT") == "TCP"
    assert u.param("lr") is None and u.has_param("lr") and not u.has_param("maddr")
    assert u.transport == "tcp"
    assert u.host_port == "example.org:5070"
    assert u.aor == "sip:alice@example.org"


def test_defaults_and_sips() -> None:
    assert parse_uri("sip:example.org").transport == "udp"
    assert parse_uri("sips:bob@example.org").transport == "tls"
    assert parse_uri("SIP:Bob@EXAMPLE.org").scheme == "sip"
    assert parse_uri("SIP:Bob@EXAMPLE.org").aor == "sip:Bob@example.org"
    assert parse_uri("sip:example.org:5060").aor == "sip:example.org"


def test_ipv6_reference() -> None:
    u = parse_uri("sip:bob@[2001:DB8::1]:5061;transport=tls")
    assert (u.host, u.port) == ("[2001:db8::1]", 5061)
    assert str(u) == "sip:bob@[2001:DB8::1]:5061;transport=tls"
    assert str(SipUri("sip", "bob", host="[::1]")) == "sip:bob@[::1]"


def test_tel_and_unknown_schemes() -> None:
    t = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert (t.scheme, t.user, t.host) == ("tel", "+1-201-555-0123", "")
    assert t.param("phone-context") == "example.com"
    assert str(t) == "tel:+1-201-555-0123;phone-context=example.com"
    assert t.aor == "tel:+1-201-555-0123"
    u = parse_uri("urn:service:sos")
    assert (u.scheme, u.opaque) == ("urn", "service:sos")
    assert str(u) == "urn:service:sos"
    assert parse_uri("HTTP://example.org/x;y?z").opaque == "//example.org/x;y?z"


def test_push_params_kept_verbatim() -> None:
    text = (
        "sip:alice@192.0.2.1:5060;transport=tcp;pn-provider=apns.dev"
        ";pn-prid=ABC:voip&DEF:remote;pn-param=TEAM.org.app.voip&remote"
    )
    u = parse_uri(text)
    assert u.param("pn-prid") == "ABC:voip&DEF:remote"
    assert u.param("pn-param") == "TEAM.org.app.voip&remote"
    assert str(u) == text
    rebuilt = SipUri("sip", "alice", host="192.0.2.1", port=5060, params=u.params)
    assert str(rebuilt) == text


def test_unescape_on_parse_escape_on_serialise() -> None:
    u = parse_uri("sip:%61lice%20smith@example.org;x=a%3Bb;y=caf%C3%A9")
    assert u.user == "alice smith"
    assert u.param("x") == "a;b"
    assert u.param("y") == "café"
    out = str(SipUri("sip", u.user, host=u.host, params=u.params))
    # Only what needs it is escaped: the 'a' and legal characters stay as they are.
    assert out == "sip:alice%20smith@example.org;x=a%3Bb;y=caf%C3%A9"
    assert parse_uri(out) == u
    assert str(SipUri("sip", "a@b:c", "p@ss", "h")) == "sip:a%40b%3Ac:p%40ss@h"
    assert str(SipUri("sip", "+33;x?y&z=1", host="h")) == "sip:+33;x?y&z=1@h"
    assert str(SipUri("tel", "+1;2")) == "tel:+1%3B2"


def test_modifiers() -> None:
    u = parse_uri("sip:alice@example.org;transport=tcp")
    assert str(u.with_param("lr")) == "sip:alice@example.org;transport=tcp;lr"
    assert str(u.with_param("Transport", "tls")) == "sip:alice@example.org;transport=tls"
    dup = parse_uri("sip:h;a=1;b;a=2;c")
    assert str(dup.with_param("a", "3")) == "sip:h;a=3;b;c"
    assert str(u.with_params(ob=None, maddr="1.2.3.4")).endswith(";ob;maddr=1.2.3.4")
    assert str(u.without_param("transport")) == "sip:alice@example.org"
    assert u.without_param("transport").transport == "udp"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
        (
            "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
            "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
        ),
        (
            "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
            "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
        ),
    ],
)
def test_equivalent_uris(a: str, b: str) -> None:
    # RFC 3261 §19.1.4, the equivalent examples.
    assert parse_uri(a).matches(parse_uri(b))
    assert parse_uri(b).matches(parse_uri(a))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
        ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
        ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
        ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
        ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
        ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
        ("sip:bob@biloxi.com", "urn:bob"),
    ],
)
def test_different_uris(a: str, b: str) -> None:
    # RFC 3261 §19.1.4, the non-equivalent examples.
    assert not parse_uri(a).matches(parse_uri(b))
    assert not parse_uri(b).matches(parse_uri(a))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice@example.org",
        "sip:",
        "sip:alice@",
        "sip:@example.org",
        "sip:alice@example.org:65536",
        "sip:alice@example.org:-1",
        "sip:alice@example.org:",
        "sip:alice@exa mple.org",
        "sip:alice@example.org;;lr",
        "sip:alice@example.org;lr;",
        "sip:alice@example.org?x",
        "sip:alice@[::1",
        "sip:alice@[zz::1]",
        "sip:alice@exa<mple.org",
        "sip:al%FFice@example.org",
        "tel:",
        "1sip:x",
    ],
)
def test_malformed_uris(text: str) -> None:
    with pytest.raises(SipParseError):
        parse_uri(text)


@given(st.text(alphabet=st.characters(max_codepoint=0x2FF), max_size=20))
def test_the_cheap_bad_character_check_never_misses_what_the_regex_finds(text: str) -> None:
    if _abnf.BAD_URI_CHARS_RE.search(text):
        assert _maybe_bad_chars(text)


def test_scheme_fast_path_and_regex_path_agree() -> None:
    for text in ("sip:a@example.org", "SIP:a@example.org", "Sip:a@example.org"):
        assert parse_uri(text).scheme == "sip"
    for text in ("sips:a@example.org", "SIPS:a@example.org"):
        assert parse_uri(text).scheme == "sips"
    assert parse_uri("tel:+1555").scheme == "tel"
    for bad in ("sip:a b@example.org", "sip:<a>@example.org", 'sip:"a"@x', "sip:a@x\x7f"):
        with pytest.raises(SipParseError):
            parse_uri(bad)
