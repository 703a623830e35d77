"""Value: what the hot value classes get in place of a frozen dataclass."""

from __future__ import annotations

import pytest

from sipushd.sip import CSeq, Endpoint, NameAddr, SipUri, Via, parse_uri
from sipushd.sip._txn_types import Role, TimerFired, TransactionKey, Transmit
from sipushd.sip.headers import Headers
from sipushd.sip.message import Response


def test_equality_and_hash_follow_the_fields_and_the_exact_class() -> None:
    assert CSeq(1, "INVITE") == CSeq(1, "INVITE")
    assert hash(CSeq(1, "INVITE")) == hash(CSeq(1, "INVITE"))
    assert CSeq(1, "INVITE") != CSeq(2, "INVITE")
    assert CSeq(1, "INVITE") != (1, "INVITE")
    assert TimerFired() == TimerFired()
    assert len({Via("UDP", "a", 5060), Via("UDP", "a", 5060), Via("TCP", "a", 5060)}) == 2


def test_a_uris_cached_text_takes_no_part_in_equality() -> None:
    parsed = parse_uri("sip:alice@example.org;transport=tcp")
    built = SipUri("sip", "alice", None, "example.org", None, (("transport", "tcp"),))
    str(parsed)
    assert parsed == built and hash(parsed) == hash(built)


def test_replace_copies_with_changes_and_refuses_unknown_fields() -> None:
    via = Via("UDP", "192.0.2.1", 5060, (("branch", "z9hG4bK1"),))
    moved = via.replace(host="192.0.2.2")
    assert (moved.host, moved.transport, moved.port, moved.params) == (
        "192.0.2.2",
        "UDP",
        5060,
        (("branch", "z9hG4bK1"),),
    )
    assert via.host == "192.0.2.1"
    with pytest.raises(TypeError, match="Via has no field 'branch'"):
        via.replace(branch="x")


def test_repr_names_every_field() -> None:
    addr = NameAddr("Alice", parse_uri("sip:alice@example.org"), (("tag", "1"),))
    assert repr(addr) == (
        "NameAddr(display_name='Alice', uri=SipUri(scheme='sip', user='alice', "
        "password=None, host='example.org', port=None, params=(), headers=(), opaque=None), "
        "params=(('tag', '1'),))"
    )


def test_actions_compare_by_value() -> None:
    key = TransactionKey(Role.SERVER, "INVITE", "z9hG4bK1", "192.0.2.1:5060")
    response = Response(180, "Ringing", Headers([("Call-ID", "c")]))
    there = Endpoint("udp", "192.0.2.1", 5060)
    assert Transmit(response, there, key) == Transmit(response, there, key.replace())
    assert Transmit(response, there, key) != Transmit(response, there, None)


def test_as_dict_gives_the_fields_by_name() -> None:
    assert Endpoint("tcp", "192.0.2.1", 5061, 7).as_dict() == {
        "transport": "tcp",
        "host": "192.0.2.1",
        "port": 5061,
        "flow": 7,
    }
