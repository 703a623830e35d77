"""Registrar decisions, RFC 3261 §10.3: bindings, expiry, ordering, limits, instances."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sipushd.core.registrar import RegistrarSettings, RemovalCause
from sipushd.sip import Endpoint, Headers, Request, parse_uri
from tests.core import registry
from tests.core.registry import header

SOURCE = Endpoint("tcp", "192.0.2.10", 40000, flow=7)
UUID1 = "<urn:uuid:00000000-0000-0000-0000-000000000001>"
UUID2 = "<urn:uuid:00000000-0000-0000-0000-000000000002>"


def register(
    *contacts: str,
    call_id: str = "call-1",
    cseq: int = 1,
    expires: int | None = None,
    to: str = "<sip:alice@example.org>",
    ruri: str = "sip:example.org",
    extra: Sequence[tuple[str, str]] = (),
) -> Request:
    """A REGISTER as a UA would send it (built directly: the parser's own checks are skipped)."""
    items = [
        ("Via", "SIP/2.0/TCP 192.0.2.10:40000;branch=z9hG4bK-1"),
        ("Max-Forwards", "70"),
        ("From", "<sip:alice@example.org>;tag=f1"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
        *(("Contact", c) for c in contacts),
        *([("Expires", str(expires))] if expires is not None else []),
        *extra,
    ]
    return Request("REGISTER", parse_uri(ruri), Headers(items))


class Registry(registry.Registry):
    """REGISTERs over TCP from SOURCE, the clock starting at 1000."""

    source = SOURCE
    start = 1000.0


def test_register_creates_a_binding_and_lists_it_with_its_expiry() -> None:
    reg = Registry()
    decision = reg.send(register("<sip:alice@192.0.2.10:40000;transport=tcp>"))
    assert (decision.status, decision.reason, decision.aor) == (200, "OK", "sip:alice@example.org")
    (binding,) = decision.upserts
    assert binding.contact == "sip:alice@192.0.2.10:40000;transport=tcp"
    assert binding.key == "sip:alice@192.0.2.10:40000;transport=tcp"
    assert binding.expires_at == reg.now + 3600  # default_expires
    assert (binding.call_id, binding.cseq, binding.flow) == ("call-1", 1, SOURCE)
    assert binding.registered_at == binding.updated_at == reg.now
    assert decision.registered == decision.upserts
    assert header(decision, "Contact") == [
        "<sip:alice@192.0.2.10:40000;transport=tcp>;expires=3600"
    ]


def test_response_copies_the_request_and_carries_the_contacts() -> None:
    reg = Registry()
    request = register("<sip:alice@192.0.2.10>")
    response = reg.send(request).response(request, to_tag="t1")
    assert response.status == 200
    assert response.call_id == "call-1"
    assert response.to.tag == "t1"
    assert [str(c.uri) for c in response.contacts] == ["sip:alice@192.0.2.10"]
    assert response.contacts[0].expires == 3600


def test_refresh_keeps_registration_time_and_lists_remaining_expiry() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>", expires=600))
    first = reg.bindings["sip:alice@192.0.2.10"]
    reg.now += 100
    decision = reg.send(register("<sip:alice@192.0.2.10>", cseq=2, expires=600))
    (binding,) = decision.upserts
    assert binding.registered_at == first.registered_at
    assert (binding.updated_at, binding.expires_at, binding.cseq) == (reg.now, reg.now + 600, 2)
    assert not decision.removals
    assert len(reg.bindings) == 1


def test_other_bindings_are_listed_with_their_remaining_time() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>", expires=600))
    reg.now += 250.5
    decision = reg.send(register("<sip:alice@192.0.2.11>", call_id="call-2", expires=900))
    assert header(decision, "Contact") == [
        "<sip:alice@192.0.2.10>;expires=350",
        "<sip:alice@192.0.2.11>;expires=900",
    ]


def test_unregister_with_expires_zero_removes_the_binding() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>"))
    decision = reg.send(register("<sip:alice@192.0.2.10>;expires=0", cseq=2))
    assert decision.status == 200
    assert [r.cause for r in decision.removals] == [RemovalCause.UNREGISTERED]
    assert not decision.upserts
    assert header(decision, "Contact") == []
    assert reg.bindings == {}


def test_expires_header_zero_unregisters_and_unknown_contact_is_no_error() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>"))
    decision = reg.send(register("<sip:alice@192.0.2.10>", cseq=2, expires=0))
    assert decision.removal_keys == ("sip:alice@192.0.2.10",)
    decision = reg.send(register("<sip:alice@192.0.2.99>", cseq=3, expires=0))
    assert (decision.status, decision.removals, decision.upserts) == (200, (), ())


def test_wildcard_with_expires_zero_removes_every_binding() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>"))
    reg.send(register("<sip:alice@192.0.2.11>", call_id="other", cseq=50))
    decision = reg.send(register("*", cseq=2, expires=0))
    assert decision.status == 200
    assert sorted(decision.removal_keys) == ["sip:alice@192.0.2.10", "sip:alice@192.0.2.11"]
    assert header(decision, "Contact") == []


@pytest.mark.parametrize(
    ("contacts", "expires"),
    [(("*",), None), (("*",), 3600), (("*", "<sip:alice@192.0.2.10>"), 0)],
)
def test_wildcard_needs_expires_zero_and_no_other_contact(
    contacts: tuple[str, ...], expires: int | None
) -> None:
    decision = Registry().send(register(*contacts, expires=expires))
    assert decision.status == 400
    assert not decision.upserts and not decision.removals


def test_wildcard_with_stale_cseq_fails_and_removes_nothing() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>", cseq=5))
    decision = reg.send(register("*", cseq=5, expires=0))
    assert decision.status == 500
    assert len(reg.bindings) == 1


def test_too_brief_expiry_is_refused_with_min_expires() -> None:
    decision = Registry(min_expires=60).send(register("<sip:alice@192.0.2.10>;expires=30"))
    assert (decision.status, decision.reason) == (423, "Interval Too Brief")
    assert header(decision, "Min-Expires") == ["60"]
    assert not decision.upserts


def test_too_brief_expires_header_is_refused_too() -> None:
    decision = Registry().send(register("<sip:alice@192.0.2.10>", expires=1))
    assert decision.status == 423


def test_too_large_expiry_is_capped_at_max_expires() -> None:
    reg = Registry(max_expires=7200)
    decision = reg.send(register("<sip:alice@192.0.2.10>;expires=4294967295"))
    assert decision.upserts[0].expires_at == reg.now + 7200
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.10>;expires=7200"]


def test_contact_expires_param_wins_over_expires_header() -> None:
    reg = Registry()
    decision = reg.send(register("<sip:alice@192.0.2.10>;expires=120", expires=1800))
    assert decision.upserts[0].expires_at == reg.now + 120


def test_expires_header_is_used_without_param() -> None:
    reg = Registry()
    decision = reg.send(register("<sip:alice@192.0.2.10>", expires=1800))
    assert decision.upserts[0].expires_at == reg.now + 1800


def test_same_call_id_with_stale_cseq_is_refused() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>", cseq=10, expires=600))
    for cseq in (10, 9):
        decision = reg.send(register("<sip:alice@192.0.2.10>", cseq=cseq, expires=1200))
        assert (decision.status, decision.reason) == (500, "Out of Order")
        assert not decision.upserts
    assert reg.bindings["sip:alice@192.0.2.10"].expires_at == reg.now + 600


def test_new_call_id_updates_whatever_its_cseq() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>", cseq=10))
    decision = reg.send(register("<sip:alice@192.0.2.10>", call_id="call-2", cseq=1))
    assert decision.status == 200
    assert reg.bindings["sip:alice@192.0.2.10"].call_id == "call-2"


def test_several_contacts_in_one_request() -> None:
    reg = Registry()
    decision = reg.send(
        register("<sip:alice@192.0.2.10>;expires=600", "<sip:alice@192.0.2.11>, <sip:alice@h3>")
    )
    assert decision.status == 200
    assert len(decision.upserts) == 3
    assert len(header(decision, "Contact")) == 3
    assert reg.bindings["sip:alice@192.0.2.10"].expires_at == reg.now + 600
    assert reg.bindings["sip:alice@h3"].expires_at == reg.now + 3600


def test_q_value_is_stored_and_echoed() -> None:
    reg = Registry()
    decision = reg.send(register("<sip:alice@192.0.2.10>;q=0.5", "<sip:alice@192.0.2.11>;q=1"))
    assert reg.bindings["sip:alice@192.0.2.10"].q == 0.5
    assert header(decision, "Contact") == [
        "<sip:alice@192.0.2.10>;expires=3600;q=0.5",
        "<sip:alice@192.0.2.11>;expires=3600;q=1",
    ]


@pytest.mark.parametrize("q", ["2", "0.1234", "abc", "-0"])
def test_bad_q_value_is_a_400(q: str) -> None:
    assert Registry().send(register(f"<sip:alice@192.0.2.10>;q={q}")).status == 400


def test_max_contacts_evicts_the_least_recently_refreshed() -> None:
    reg = Registry(max_contacts_per_aor=2)
    for n in range(2):
        reg.send(register(f"<sip:alice@192.0.2.{n}>", call_id=f"c{n}"))
        reg.now += 10
    reg.send(register("<sip:alice@192.0.2.0>", call_id="c0", cseq=2))  # .0 is now the freshest
    reg.now += 10
    decision = reg.send(register("<sip:alice@192.0.2.9>", call_id="c9"))
    assert decision.status == 200
    assert [(r.binding.key, r.cause) for r in decision.removals] == [
        ("sip:alice@192.0.2.1", RemovalCause.EVICTED)
    ]
    assert sorted(reg.bindings) == ["sip:alice@192.0.2.0", "sip:alice@192.0.2.9"]


def test_more_contacts_in_one_request_than_allowed_is_refused() -> None:
    reg = Registry(max_contacts_per_aor=2)
    decision = reg.send(register("<sip:a@h1>", "<sip:a@h2>", "<sip:a@h3>"))
    assert decision.status == 403
    assert reg.bindings == {}


def test_instance_keys_the_binding_across_contact_changes() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@192.0.2.10:5060>;+sip.instance="{UUID1}";reg-id=1'))
    moved = Endpoint("tcp", "198.51.100.7", 1234, flow=9)
    decision = reg.send(
        register(f'<sip:alice@198.51.100.7:1234>;+sip.instance="{UUID1}";reg-id=1', cseq=2),
        moved,
    )
    (binding,) = reg.bindings.values()
    assert binding.key == UUID1
    assert (binding.contact, binding.flow, binding.reg_id) == (
        "sip:alice@198.51.100.7:1234",
        moved,
        1,
    )
    assert header(decision, "Contact") == [
        f'<sip:alice@198.51.100.7:1234>;expires=3600;+sip.instance="{UUID1}";reg-id=1'
    ]


def test_instance_is_compared_case_insensitively() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@h1>;+sip.instance="{UUID1}"'))
    reg.send(register(f'<sip:alice@h2>;+sip.instance="{UUID1.upper()}"', cseq=2))
    assert list(reg.bindings) == [UUID1]


def test_two_instances_are_two_bindings() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@h1>;+sip.instance="{UUID1}"'))
    reg.send(register(f'<sip:alice@h1>;+sip.instance="{UUID2}"', call_id="c2"))
    assert sorted(reg.bindings) == [UUID1, UUID2]


def test_query_without_contact_lists_bindings_and_changes_nothing() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>"))
    decision = reg.send(register(cseq=2))
    assert decision.status == 200
    assert (decision.upserts, decision.removals) == ((), ())
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.10>;expires=3600"]


def test_expired_bindings_are_neither_listed_nor_compared() -> None:
    reg = Registry()
    reg.send(register("<sip:alice@192.0.2.10>", cseq=9, expires=60))
    reg.now += 61
    decision = reg.send(register("<sip:alice@192.0.2.11>", cseq=1))
    assert header(decision, "Contact") == ["<sip:alice@192.0.2.11>;expires=3600"]
    decision = reg.send(register("<sip:alice@192.0.2.10>", cseq=2))
    assert decision.status == 200  # the expired binding's CSeq 9 no longer counts


@pytest.mark.parametrize(
    ("ruri", "to", "status"),
    [
        ("sip:other.example", "<sip:alice@example.org>", 403),
        ("sip:example.org", "<sip:alice@other.example>", 404),
        ("sip:example.org", "<sip:example.org>", 404),
        ("sip:example.org", "<tel:+15551234>", 400),
    ],
)
def test_domain_and_address_of_record_checks(ruri: str, to: str, status: int) -> None:
    decision = Registry().send(register("<sip:alice@192.0.2.10>", ruri=ruri, to=to))
    assert decision.status == status
    assert not decision.upserts


def test_domain_and_aor_compare_case_insensitively() -> None:
    decision = Registry().send(
        register("<sip:alice@h>", ruri="sip:EXAMPLE.org", to="<sip:alice@Example.ORG>")
    )
    assert (decision.status, decision.aor) == (200, "sip:alice@example.org")


def test_unknown_required_extension_is_a_420() -> None:
    decision = Registry().send(register("<sip:alice@h>", extra=[("Require", "path, foo")]))
    assert decision.status == 420
    assert header(decision, "Unsupported") == ["foo"]


def test_non_sip_contact_is_refused() -> None:
    assert Registry().send(register("<mailto:alice@example.org>")).status == 400


def test_not_a_register_is_a_programming_error() -> None:
    request = register("<sip:alice@h>").replace(method="OPTIONS")
    with pytest.raises(ValueError, match="not a REGISTER"):
        Registry().send(request)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        RegistrarSettings(min_expires=100, default_expires=50)
    with pytest.raises(ValueError):
        RegistrarSettings(pnsreg_interval=120)
    with pytest.raises(ValueError):
        RegistrarSettings(max_contacts_per_aor=0)
