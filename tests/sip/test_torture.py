"""Messages modelled on the RFC 4475 torture tests: liberal where valid, strict where not."""

from __future__ import annotations

import pytest

from sipushd.sip import Request, Response, SipParseError, parse_message

_COMMON = (
    b"To: <sip:bob@example.com>\r\n"
    b"From: <sip:alice@example.com>;tag=1\r\n"
    b"Call-ID: torture@example.com\r\n"
    b"Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n"
)


def _request(first: bytes, extra: bytes = b"", method: bytes = b"INVITE") -> bytes:
    return first + b"\r\n" + _COMMON + b"CSeq: 1 " + method + b"\r\n" + extra + b"\r\n"


def _parse_request(data: bytes) -> Request:
    msg = parse_message(data)
    assert isinstance(msg, Request)
    assert parse_message(msg.to_bytes()) == msg
    return msg


def test_wsinv_folding_and_whitespace() -> None:
    # RFC 4475 §3.1.1.1: folded lines, LWS around colons and in values.
    data = (
        b"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0\r\n"
        b"TO :\r\n sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n\r\n"
        b'from   : "J Rosenberg \\\\\\""       <sip:jdrosen@example.com>\r\n'
        b"  ;\r\n  tag = 98asjd8\r\n"
        b"MaX-fOrWaRdS: 0068\r\n"
        b"Call-ID: wsinv.ndaksdj@192.0.2.1\r\n"
        b"Content-Length   : 0\r\n"
        b"cseq: 0009\r\n  INVITE\r\n"
        b"Via  : SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw\r\n"
        b"s :\r\n"
        b"NewFangledHeader:   newfangled value\r\n continued newfangled value\r\n"
        b"UnknownHeaderWithUnusualValue: ;;,,;;,;\r\n"
        b"\r\n"
    )
    m = _parse_request(data)
    assert m.to.tag == "1918181833n"
    assert m.from_.display_name == 'J Rosenberg \\"'
    assert m.from_.tag == "98asjd8"
    assert m.max_forwards == 68
    assert (m.cseq.seq, m.cseq.method) == (9, "INVITE")
    assert (m.top_via.transport, m.top_via.host) == ("UDP", "192.0.2.2")
    assert m.headers.get("Subject") == ""
    assert m.headers.get("newfangledheader") == "newfangled value continued newfangled value"
    assert m.headers.get("UnknownHeaderWithUnusualValue") == ";;,,;;,;"


def test_intmeth_unusual_tokens_and_user() -> None:
    # RFC 4475 §3.1.1.2: every token character, a crazy but legal Request-URI.
    method = b"!interesting-Method0123456789_*+`.%indeed'~"
    uri = (
        b"sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
        b":&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com"
    )
    extra = "extensionHeader-!.%*+_`'~: \ufeff大停電\r\n".encode()
    m = _parse_request(_request(method + b" " + uri + b" SIP/2.0", extra, method))
    assert m.method == method.decode()
    assert m.uri.user == "1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"
    assert m.uri.password == "&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"
    assert m.headers.get("extensionheader-!.%*+_`'~") == "\ufeff大停電"


def test_escapes_in_uris() -> None:
    # RFC 4475 §3.1.1.3 / §3.1.1.4: escaped characters and an escaped NUL.
    m = _parse_request(_request(b"INVITE sip:sips%3Auser%40example.com@example.net SIP/2.0"))
    assert m.uri.user == "sips:user@example.com"
    assert str(m.uri) == "sip:sips%3Auser%40example.com@example.net"
    n = _parse_request(
        _request(b"REGISTER sip:null-%00-null@example.com SIP/2.0", method=b"REGISTER")
    )
    assert n.uri.user == "null-\x00-null"


def test_semicolon_in_user_and_lws_display_name() -> None:
    # RFC 4475 §3.1.1.6 (semiuri) and §3.1.1.9 (lwsdisp).
    m = _parse_request(
        _request(b"OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0", method=b"OPTIONS")
    )
    assert m.uri.user == "user;par=u@example.net"
    assert m.uri.params == ()
    data = _request(b"OPTIONS sip:x@y SIP/2.0", method=b"OPTIONS").replace(
        b"From: <sip:alice@example.com>;tag=1", b"From: caller<sip:caller@example.com>;tag=323"
    )
    assert _parse_request(data).from_.display_name == "caller"


def test_dblreq_bytes_after_content_length_ignored() -> None:
    # RFC 4475 §3.1.1.11 and RFC 3261 §18.3.
    first = _request(b"REGISTER sip:example.com SIP/2.0", b"Content-Length: 0\r\n", b"REGISTER")
    m = _parse_request(first + _request(b"INVITE sip:joe@example.com SIP/2.0"))
    assert (m.method, m.body) == ("REGISTER", b"")


def test_missing_content_length_in_datagram_takes_rest() -> None:
    m = _parse_request(_request(b"MESSAGE sip:x@y SIP/2.0", method=b"MESSAGE") + b"hi\x00there")
    assert m.body == b"hi\x00there"


@pytest.mark.parametrize("reason", [b"", "Довольно длинная фраза".encode()])
def test_unusual_reason_phrases(reason: bytes) -> None:
    # RFC 4475 §3.1.1.12 / §3.1.1.13.
    data = b"SIP/2.0 100 " + reason + b"\r\n" + _COMMON + b"CSeq: 1 INVITE\r\n\r\n"
    m = parse_message(data)
    assert isinstance(m, Response)
    assert m.reason == reason.decode()
    assert parse_message(m.to_bytes()) == m


def test_unknown_schemes_are_opaque() -> None:
    # RFC 4475 §3.1.1.8 / §3.1.2.?: unknown Request-URI schemes are for the proxy to refuse.
    m = _parse_request(
        _request(b"OPTIONS nobodyKnowsThisScheme:totallyopaquecontent SIP/2.0", method=b"OPTIONS")
    )
    assert (m.uri.scheme, m.uri.opaque) == ("nobodyknowsthisscheme", "totallyopaquecontent")


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (_request(b"INVITE  sip:x@y SIP/2.0"), 400),  # lwsstart
        (_request(b"INVITE sip:x@y SIP/2.0 "), 400),  # trws
        (_request(b"INVITE <sip:x@y> SIP/2.0"), 400),  # ltgtruri
        (_request(b"INVITE sip:x@y; lr SIP/2.0"), 400),  # lwsruri
        (_request(b"INVITE sip:x@y SIP/7.0"), 505),  # badvers
        (_request(b"INVITE sip:x@y SIP/2.0", method=b"REGISTER"), 400),  # mismatch01
        (_request(b"INVITE sip:x@y SIP/2.0", b"To: <sip:c@d>\r\n"), 400),  # multi01
        (_request(b"INVITE sip:x@y SIP/2.0", b"Content-Length: 5\r\n"), 400),  # clerr
        (_request(b"INVITE sip:x@y SIP/2.0", b"Content-Length: 5.0\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"CSeq: 1 INVITE\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Max-Forwards: -1\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Contact: *, <sip:a@b>\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Contact: <sip:a@b>,\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Contact: <sip:a@b>;q=1.5\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Contact: <sip:a@b>;expires=x\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Via: SIP/2.0/UDP h;;b\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Bad Name: x\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"Bare\rCR: x\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"X: a\x01b\r\n"), 400),
        (_request(b"INVITE sip:x@y SIP/2.0", b"X: \xff\xfe\r\n"), 400),
        (
            _request(b"INVITE sip:x@y SIP/2.0").replace(
                b"<sip:bob@example.com>", b'"Bob <sip:b@c>'
            ),
            400,
        ),  # quotbal
        (
            _request(b"INVITE sip:x@y SIP/2.0").replace(b"Call-ID: torture@example.com\r\n", b""),
            400,
        ),
        (
            _request(b"INVITE sip:x@y SIP/2.0").replace(
                b"Call-ID: torture@example.com", b"Call-ID: a b"
            ),
            400,
        ),
        (b"SIP/2.0 4294967301 Big\r\n" + _COMMON + b"CSeq: 1 INVITE\r\n\r\n", 400),  # bigcode
        (b"SIP/2.0 99 Small\r\n" + _COMMON + b"CSeq: 1 INVITE\r\n\r\n", 400),
        (b" INVITE sip:x@y SIP/2.0\r\n" + _COMMON + b"CSeq: 1 INVITE\r\n\r\n", 400),
        (b"INVITE sip:x@y SIP/2.0\r\n" + _COMMON + b"CSeq: 1 INVITE\r\n", 400),  # no blank line
    ],
)
def test_rejected(data: bytes, status: int) -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(data)
    assert info.value.status_hint == status


def test_folded_first_header_line_is_rejected() -> None:
    with pytest.raises(SipParseError):
        parse_message(b"INVITE sip:x@y SIP/2.0\r\n " + _COMMON + b"CSeq: 1 INVITE\r\n\r\n")
