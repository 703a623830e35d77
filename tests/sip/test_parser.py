"""parse_message: datagram parsing, validation and serialisation."""

from __future__ import annotations

import pytest

from sipushd.sip import (
    CSeq,
    Request,
    Response,
    SipParseError,
    make_response,
    parse_message,
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
