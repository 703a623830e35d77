"""parse_message: datagram parsing, validation and serialisation."""

from __future__ import annotations

import pytest

from sipushd.sip import (
    CSeq,
    Endpoint,
    Headers,
    Request,
    Response,
    SipParseError,
    make_response,
    parse_message,
    parse_uri,
    reason_phrase,
)
from tests.sip.samples import INVITE, OPTIONS, REGISTER, RESPONSE, SDP


def _req(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    return msg


def test_register_accessors() -> None:
    m = _req(REGISTER)
    assert m.method == "REGISTER"
    assert str(m.uri) == "sip:example.org"
    assert m.top_via.transport == "TCP"
    assert m.top_via.host == "192.0.2.10"
    assert m.top_via.port == 5060
    assert m.top_via.rport == ""
    assert m.transaction_branch == "z9hG4bK776asdhds"
    assert m.max_forwards == 70
    assert m.to.display_name == "Alice"
    assert m.to.tag is None
    assert m.from_.tag == "1928301774"
    assert m.call_id == "a84b4c76e66710@pc33.example.org"
    assert m.cseq == CSeq(314159, "REGISTER")
    assert m.expires == 7200
    assert m.supported == ["outbound", "path"]
    assert not m.is_star_contact
    (contact,) = m.contacts
    assert contact.instance == "<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"
    assert contact.reg_id == 1
    assert contact.expires == 3600
    assert contact.q == 0.5
    assert contact.uri.param("pn-prid") == "ABC:voip&DEF:remote"
    assert contact.uri.param("pn-param") == "TEAM.org.app.voip&remote"
    assert "Content-Length" not in m.headers


def test_push_params_survive_reserialisation() -> None:
    m = _req(REGISTER)
    out = m.to_bytes()
    assert b"pn-prid=ABC:voip&DEF:remote" in out
    assert b"pn-param=TEAM.org.app.voip&remote" in out
    assert b";pn-prid=ABC:voip&DEF:remote>" in str(m.contacts[0]).encode()


@pytest.mark.parametrize("data", [REGISTER, INVITE, OPTIONS, RESPONSE])
def test_roundtrip(data: bytes) -> None:
    m = parse_message(data)
    assert parse_message(m.to_bytes()) == m


def test_invite_body_and_content_length() -> None:
    m = _req(INVITE)
    assert m.body == SDP
    assert m.content_type == "application/sdp"
    assert f"Content-Length: {len(SDP)}\r\n".encode() in m.to_bytes()
    assert m.to_bytes().endswith(b"\r\n\r\n" + SDP)


def test_compact_forms_expanded() -> None:
    m = _req(OPTIONS)
    names = [name for name, _ in m.headers]
    assert names == ["Via", "From", "To", "Call-ID", "CSeq"]
    assert m.call_id == "opt-1"
    assert m.headers.get("i") == "opt-1"
    assert m.max_forwards is None


def test_response() -> None:
    m = parse_message(RESPONSE)
    assert isinstance(m, Response)
    assert (m.status, m.reason) == (200, "OK")
    assert m.to.tag == "a6c85cf"
    assert m.top_via.received == "192.0.2.1"
    assert m.to_bytes().startswith(b"SIP/2.0 200 OK\r\n")


def test_make_response_copies_headers() -> None:
    m = _req(REGISTER)
    r = make_response(m, 200, to_tag="xyz", headers=[("Expires", "60")])
    assert r.reason == reason_phrase(200) == "OK"
    assert r.headers.get_all("Via") == m.headers.get_all("Via")
    assert r.to.tag == "xyz"
    assert r.from_ == m.from_
    assert r.call_id == m.call_id
    assert r.cseq == m.cseq
    assert r.headers.get("Expires") == "60"
    assert parse_message(r.to_bytes()) == r


def test_make_response_keeps_existing_to_tag() -> None:
    bye = RESPONSE.replace(b"SIP/2.0 200 OK", b"BYE sip:x@y SIP/2.0")
    r = make_response(_req(bye.replace(b"1 INVITE", b"1 BYE")), 481, to_tag="new")
    assert r.to.tag == "a6c85cf"
    assert r.reason == "Call/Transaction Does Not Exist"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"", 400),
        (b"garbage\r\n\r\n", 400),
        (REGISTER.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
        (RESPONSE.replace(b"SIP/2.0 200", b"SIP/3.0 200"), 505),
        (REGISTER.replace(b"314159 REGISTER", b"314159 INVITE"), 400),
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: -1"), 400),
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: 0\r\nl: 5"), 400),
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: 99999999"), 413),
        (REGISTER.replace(b"Content-Length: 0", b"Content-Length: 10"), 400),
        (REGISTER.replace(b"CSeq: 314159", b"CSeq: 4294967296"), 400),
        (REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards: 99999999999"), 400),
        (REGISTER.replace(b"192.0.2.10:5060;branch", b"192.0.2.10:65536;branch"), 400),
        (REGISTER.replace(b"Max-Forwards: 70\r\n", b"Max-Forwards 70\r\n"), 400),
        (REGISTER.replace(b'"Alice" <sip', b'"Alice <sip'), 400),
        (REGISTER.replace(b"Call-ID: a84b4c76e66710@pc33.example.org\r\n", b""), 400),
        (REGISTER.replace(b"Via: ", b"X-Via: "), 400),
        (REGISTER + b"x" * 70000, 413),
    ],
)
def test_malformed(data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status_hint == status


def test_messages_built_in_code() -> None:
    uri = parse_uri("sip:bob@example.org")
    headers = Headers(
        [
            ("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKcode"),
            ("From", "<sip:alice@example.org>;tag=a"),
            ("To", "<sip:bob@example.org>"),
            ("Call-ID", "code-1"),
            ("CSeq", "2 MESSAGE"),
            ("Content-Length", "999"),
            ("Content-Type", "text/plain"),
        ]
    )
    m = Request("MESSAGE", uri, headers, b"hello")
    assert m.transaction_branch == "z9hG4bKcode"
    assert m.cseq == CSeq(2, "MESSAGE")
    assert m.contacts == [] and not m.is_star_contact
    data = m.to_bytes()
    assert b"Content-Length: 5\r\n" in data and b"999" not in data
    parsed = _req(data)
    assert parsed == m.replace(headers=headers.remove("Content-Length"))
    assert hash(parsed) == hash(m.replace(headers=headers.remove("Content-Length")))
    bigger = m.replace(body=b"hello world")
    assert b"Content-Length: 11\r\n" in bigger.to_bytes()
    assert bigger.cseq == m.cseq


def test_accessor_errors_are_parse_errors() -> None:
    m = Request("OPTIONS", parse_uri("sip:x@y"), Headers([("CSeq", "x")]))
    assert m.transaction_branch is None
    for name in ("top_via", "from_", "to", "call_id", "cseq"):
        with pytest.raises(SipParseError):
            getattr(m, name)
    bad = m.replace(headers=Headers([("Expires", "soon"), ("Authorization", "Digest x")]))
    with pytest.raises(SipParseError):
        _ = bad.expires
    with pytest.raises(SipParseError):
        _ = bad.authorization


def test_star_contact_and_lists() -> None:
    star = _req(
        REGISTER.replace(b"Contact: <sip:alice@192", b"Contact: *\r\nX-Old: <sip:alice@192")
    )
    assert star.is_star_contact and star.contacts == []
    routed = _req(
        INVITE.replace(
            b"CSeq: 1 INVITE\r\n",
            b"CSeq: 1 INVITE\r\nRoute: <sip:p1.example.org;lr>, <sip:p2.example.org;lr>\r\n"
            b"Route: <sip:p3.example.org;lr>\r\nRecord-Route: <sip:rr.example.org;lr>\r\n"
            b"Path: <sip:path.example.org;lr;ob>\r\nRequire: outbound\r\n"
            b"Proxy-Require: sec-agree\r\n"
            b'Proxy-Authorization: Digest username="a", realm="r", nonce="n"\r\n'
            b'WWW-Authenticate: Digest realm="r", nonce="n", algorithm=SHA-256\r\n'
            b'Proxy-Authenticate: Digest realm="p", nonce="q"\r\n',
        )
    )
    assert [r.uri.host for r in routed.routes] == [
        "p1.example.org",
        "p2.example.org",
        "p3.example.org",
    ]
    assert routed.record_routes[0].uri.has_param("lr")
    assert routed.paths[0].uri.has_param("ob")
    assert routed.require == ["outbound"] and routed.proxy_require == ["sec-agree"]
    assert routed.proxy_authorization[0].param("username") == "a"
    assert routed.www_authenticate[0].param("algorithm") == "SHA-256"
    assert routed.proxy_authenticate[0].param("realm") == "p"
    assert routed.authorization == []


def test_endpoint() -> None:
    udp = Endpoint("udp", "192.0.2.1", 5060)
    tls = Endpoint("tls", "2001:db8::1", 5061, flow=7)
    assert not udp.reliable and tls.reliable
    assert str(udp) == "udp:192.0.2.1:5060"
    assert str(tls) == "tls:[2001:db8::1]:5061"
    assert udp == Endpoint("udp", "192.0.2.1", 5060, None)
