"""Binding as a value: equality, hash, copies with changes, derived tokens."""

from __future__ import annotations

import pytest

from sipushd.core.binding import Binding, drop_dead_token
from sipushd.core.pushparams import PushTarget
from sipushd.sip import Endpoint

PUSH = PushTarget("apns", False, "org.example.app", "ABCD1234", (("voip", "v1"), ("remote", "r1")))


def binding(**changes: object) -> Binding:
    base = Binding(
        aor="sip:alice@example.org",
        key="<urn:uuid:00000000-0000-1000-8000-aabbccddeeff>",
        contact="sip:alice@192.0.2.10:5060",
        expires_at=3700.0,
        call_id="c1",
        cseq=1,
        flow=Endpoint("udp", "192.0.2.10", 5060),
        registered_at=100.0,
        updated_at=100.0,
        push=PUSH,
    )
    return base.replace(**changes)


def test_equal_bindings_hash_alike_and_any_field_tells_them_apart() -> None:
    assert binding() == binding() and hash(binding()) == hash(binding())
    assert binding(cseq=2) != binding()
    assert binding(path=("<sip:edge.example.org;lr>",)) != binding()
    assert len({binding(), binding(), binding(user_agent="x")}) == 2


def test_replace_changes_only_what_it_names_and_derives_tokens_again() -> None:
    original = binding()
    assert original.tokens == {"v1", "r1"}
    moved = original.replace(flow=Endpoint("tcp", "192.0.2.10", 40000, 7), push=None)
    assert moved.flow == Endpoint("tcp", "192.0.2.10", 40000, 7)
    assert moved.push is None and moved.tokens == frozenset()
    assert (moved.aor, moved.key, moved.cseq, moved.expires_at) == (
        original.aor,
        original.key,
        original.cseq,
        original.expires_at,
    )
    assert original.push == PUSH  # the original is unchanged


def test_replace_refuses_an_unknown_field() -> None:
    with pytest.raises(TypeError, match="no field 'tokens'"):
        binding().replace(tokens=frozenset())


def test_dropping_a_dead_token_keeps_the_others() -> None:
    left = drop_dead_token(binding(), "v1")
    assert left.push is not None and left.push.tokens == (("remote", "r1"),)
    assert left.tokens == {"r1"}
    assert drop_dead_token(left, "r1").push is None
