"""StreamParser: framing of TCP/TLS byte streams (RFC 3261 §18.3, RFC 5626 keep-alives)."""

from __future__ import annotations

import pytest

from sipushd.sip import Request, SipParseError, StreamParser, parse_message
from tests.sip.samples import INVITE, REGISTER, RESPONSE


def test_messages_split_at_any_byte() -> None:
    data = b"\r\n\r\n" + REGISTER + INVITE + b"\r\n" + RESPONSE + b"\r\n\r\n"
    expected = [parse_message(m) for m in (REGISTER, INVITE, RESPONSE)]
    for step in (1, 2, 3, 7, 100, len(data)):
        parser = StreamParser()
        got = []
        for i in range(0, len(data), step):
            got += parser.feed(data[i : i + step])
        assert got == expected
        assert parser.keepalives == 2


def test_body_with_nul_bytes_and_crlf() -> None:
    body = b"--b\r\n\x00\x01\r\n\r\n--b--\r\n"
    msg = parse_message(INVITE)
    assert isinstance(msg, Request)
    data = msg.replace(body=body).to_bytes()
    parser = StreamParser()
    (got,) = parser.feed(data)
    assert got.body == body


def test_waits_for_the_whole_body() -> None:
    parser = StreamParser()
    assert parser.feed(INVITE[:-5]) == []
    (msg,) = parser.feed(INVITE[-5:])
    assert msg == parse_message(INVITE)


def test_missing_content_length_is_an_error_on_streams() -> None:
    data = REGISTER.replace(b"Content-Length: 0\r\n", b"")
    with pytest.raises(SipParseError) as info:
        StreamParser().feed(data)
    assert info.value.status_hint == 400


def test_declared_body_too_large() -> None:
    parser = StreamParser(max_message_size=2000)
    data = REGISTER.replace(b"Content-Length: 0", b"Content-Length: 5000")
    with pytest.raises(SipParseError) as info:
        parser.feed(data)
    assert info.value.status_hint == 413


def test_endless_head_refused() -> None:
    parser = StreamParser(max_message_size=1000)
    parser.feed(b"INVITE sip:a@b SIP/2.0\r\n")
    with pytest.raises(SipParseError) as info:
        for _ in range(100):
            parser.feed(b"X-Filler: " + b"x" * 50 + b"\r\n")
    assert info.value.status_hint == 413


def test_stream_unusable_after_error() -> None:
    parser = StreamParser()
    with pytest.raises(SipParseError):
        parser.feed(b"NOT SIP AT ALL\r\n\r\n")
    with pytest.raises(SipParseError):
        parser.feed(REGISTER)


def test_lone_crlf_pong_is_skipped() -> None:
    parser = StreamParser()
    assert parser.feed(b"\r\n") == []
    assert parser.feed(REGISTER) == [parse_message(REGISTER)]
    assert parser.keepalives == 0
