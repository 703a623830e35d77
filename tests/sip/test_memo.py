"""The parsers' bounded memo."""

from __future__ import annotations

import pytest

from sipushd.sip import SipParseError, parse_uri
from sipushd.sip._memo import Memo
from sipushd.sip.headers import parse_contact_field, parse_name_addr


def test_memo_keeps_results_up_to_its_size_then_starts_over() -> None:
    memo = Memo[int](3)
    for n in range(3):
        assert memo.put(f"k{n}", n) == n
    assert [memo.get(f"k{n}") for n in range(3)] == [0, 1, 2]
    memo.put("k3", 3)  # full: the old results go, the new one stays
    assert len(memo) == 1
    assert memo.get("k0") is None and memo.get("k3") == 3


def test_parsers_answer_a_repeated_text_with_the_same_result() -> None:
    text = "sip:memo-alice@example.org;transport=tcp"
    assert parse_uri(text) is parse_uri(text)
    addr = '"Alice" <sip:memo-alice@example.org>;tag=abc'
    assert parse_name_addr(addr) is parse_name_addr(addr)
    field = "<sip:memo-a@10.0.0.1>;expires=60, <sip:memo-b@10.0.0.2>"
    first = parse_contact_field(field)
    assert first is not None and first is parse_contact_field(field)
    assert [str(c.uri) for c in first] == ["sip:memo-a@10.0.0.1", "sip:memo-b@10.0.0.2"]


def test_a_malformed_text_fails_every_time() -> None:
    for _ in range(2):
        with pytest.raises(SipParseError):
            parse_uri("sip:memo@bad host")
        with pytest.raises(SipParseError):
            parse_name_addr("<sip:memo@example.org")
    assert parse_contact_field("*") is None
    assert parse_contact_field("*") is None
