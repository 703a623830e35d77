"""Registrar decisions for RFC 8599 push bindings, Path (RFC 3327) and GRUU (RFC 5627)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from sipushd.core.binding import drop_dead_token, gruu_instance
from sipushd.core.pushparams import PushTarget
from sipushd.core.registrar import RemovalCause
from sipushd.sip import Endpoint, Headers, Request, parse_uri
from tests.core import registry
from tests.core.registry import header

SOURCE = Endpoint("tls", "192.0.2.10", 40000, flow=3)
UUID1 = "<urn:uuid:00000000-0000-0000-0000-000000000001>"
UUID2 = "<urn:uuid:00000000-0000-0000-0000-000000000002>"
APNS = "pn-provider=apns;pn-param=ABCD1234.org.example.app.voip;pn-prid=00aa11bb"
APNS_DEV = (
    "pn-provider=apns.dev;pn-param=ABCD1234.org.example.app.voip%26remote;"
    "pn-prid=00aa11bb:voip%2622cc33dd:remote"
)
FCM = "pn-provider=fcm;pn-param=my-project;pn-prid=fcm-token-1"


def register(
    *contacts: str,
    call_id: str = "call-1",
    cseq: int = 1,
    extra: Sequence[tuple[str, str]] = (),
) -> Request:
    """A REGISTER for sip:alice@example.org carrying `contacts`."""
    items = [
        ("Via", "SIP/2.0/TLS 192.0.2.10:40000;branch=z9hG4bK-1"),
        ("From", "<sip:alice@example.org>;tag=f1"),
        ("To", "<sip:alice@example.org>"),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} REGISTER"),
        *(("Contact", c) for c in contacts),
        *extra,
    ]
    return Request("REGISTER", parse_uri("sip:example.org"), Headers(items))


class Registry(registry.Registry):
    """REGISTERs over TLS from SOURCE, the clock starting at 5000."""

    source = SOURCE
    start = 5000.0


def test_push_binding_stores_the_target_and_answers_feature_caps() -> None:
    reg = Registry()
    decision = reg.send(register(f'<sip:alice@192.0.2.10;{APNS}>;+sip.instance="{UUID1}"'))
    assert decision.status == 200
    (binding,) = decision.upserts
    assert binding.push == PushTarget(
        "apns", False, "org.example.app", "ABCD1234", (("voip", "00aa11bb"),)
    )
    assert binding.contact.endswith("pn-prid=00aa11bb")
    assert binding.tokens == {"00aa11bb"}
    assert not binding.pnsreg
    assert header(decision, "Feature-Caps") == ['*;+sip.pns="apns"']


def test_linphone_sandbox_binding_answers_its_own_provider_label() -> None:
    reg = Registry()
    decision = reg.send(register(f"<sip:alice@192.0.2.10;{APNS_DEV}>"))
    (binding,) = decision.upserts
    assert binding.push is not None and binding.push.sandbox
    assert binding.push.tokens == (("voip", "00aa11bb"), ("remote", "22cc33dd"))
    assert header(decision, "Feature-Caps") == ['*;+sip.pns="apns.dev"']


def test_one_feature_caps_per_provider() -> None:
    reg = Registry()
    decision = reg.send(
        register(
            f'<sip:alice@192.0.2.10;{APNS}>;+sip.instance="{UUID1}"',
            f'<sip:alice@192.0.2.11;{FCM}>;+sip.instance="{UUID2}"',
            "<sip:alice@192.0.2.12>",
        )
    )
    assert header(decision, "Feature-Caps") == ['*;+sip.pns="apns"', '*;+sip.pns="fcm"']


def test_no_feature_caps_without_push() -> None:
    decision = Registry().send(register("<sip:alice@192.0.2.10>;+sip.pnsreg"))
    assert header(decision, "Feature-Caps") == []


def test_pnsreg_asks_the_ua_to_refresh_before_expiry() -> None:
    reg = Registry()
    decision = reg.send(register(f"<sip:alice@192.0.2.10;{FCM}>;+sip.pnsreg"))
    assert decision.upserts[0].pnsreg
    # RFC 8599 §4.1.4: refresh this many seconds (> 120) before the binding expires.
    assert header(decision, "Feature-Caps") == ['*;+sip.pns="fcm";+sip.pnsreg="130"']


def test_unknown_provider_is_a_555() -> None:
    decision = Registry().send(
        register("<sip:alice@192.0.2.10;pn-provider=pushy;pn-param=x;pn-prid=abc>")
    )
    assert (decision.status, decision.reason) == (555, "Push Notification Service Not Supported")
    assert not decision.upserts


def test_provider_without_credentials_is_a_555() -> None:
    reg = Registry(providers=("apns",))
    assert reg.send(register(f"<sip:alice@192.0.2.10;{FCM}>")).status == 555
    assert reg.send(register(f"<sip:alice@192.0.2.10;{APNS_DEV}>")).status == 555
    assert reg.bindings == {}


@pytest.mark.parametrize(
    "params",
    [
        "pn-provider=apns;pn-prid=00aa11bb",  # no pn-param
        "pn-provider=apns;pn-param=ABCD1234.org.example.app;pn-prid=bad/token",
        "pn-prid=00aa11bb",  # no pn-provider
    ],
)
def test_malformed_push_params_are_a_400_with_the_reason(params: str) -> None:
    decision = Registry().send(register(f"<sip:alice@192.0.2.10;{params}>"))
    assert decision.status == 400
    assert decision.reason.startswith("Bad Push Parameters: ")
    assert not decision.upserts


def test_capability_query_registers_without_push_and_lists_the_provider() -> None:
    reg = Registry()
    decision = reg.send(register("<sip:alice@192.0.2.10;pn-provider=apns>"))
    assert decision.status == 200
    (binding,) = decision.upserts
    assert binding.push is None
    assert header(decision, "Feature-Caps") == ['*;+sip.pns="apns"']


def test_capability_query_without_value_lists_every_supported_provider() -> None:
    decision = Registry().send(register("<sip:alice@192.0.2.10;pn-provider>"))
    assert decision.status == 200
    assert header(decision, "Feature-Caps") == [
        '*;+sip.pns="apns"',
        '*;+sip.pns="apns.dev"',
        '*;+sip.pns="fcm"',
    ]


def test_capability_query_for_unsupported_provider_is_a_555() -> None:
    decision = Registry().send(register("<sip:alice@192.0.2.10;pn-provider=webpush>"))
    assert decision.status == 555


def test_refresh_without_pn_prid_stops_pushes() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@192.0.2.10;{APNS}>;+sip.instance="{UUID1}"'))
    assert reg.bindings[UUID1].push is not None
    decision = reg.send(register(f'<sip:alice@192.0.2.10>;+sip.instance="{UUID1}"', cseq=2))
    assert decision.upserts[0].push is None
    assert reg.bindings[UUID1].tokens == frozenset()
    assert header(decision, "Feature-Caps") == []


def test_deregistration_without_push_params_finds_the_push_binding() -> None:
    reg = Registry()
    reg.send(register(f"<sip:alice@192.0.2.10;transport=tls;{APNS}>"))
    # RFC 8599 §4.1.2: the de-registering Contact omits pn-prid.
    decision = reg.send(
        register("<sip:alice@192.0.2.10;transport=tls;pn-provider=apns>;expires=0", cseq=2)
    )
    assert decision.status == 200
    assert [r.cause for r in decision.removals] == [RemovalCause.UNREGISTERED]
    assert reg.bindings == {}


def test_new_binding_with_a_known_token_replaces_the_old_one() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@192.0.2.10;{APNS}>;+sip.instance="{UUID1}"'))
    reg.now += 30
    # The app was reinstalled: new instance id, same device token (any service).
    decision = reg.send(
        register(f'<sip:alice@192.0.2.10;{APNS_DEV}>;+sip.instance="{UUID2}"', call_id="c2")
    )
    assert [(r.binding.key, r.cause) for r in decision.removals] == [(UUID1, RemovalCause.REPLACED)]
    assert list(reg.bindings) == [UUID2]
    assert len(header(decision, "Contact")) == 1


def test_bindings_with_other_tokens_stay() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@192.0.2.10;{APNS}>;+sip.instance="{UUID1}"'))
    decision = reg.send(
        register(f'<sip:alice@192.0.2.11;{FCM}>;+sip.instance="{UUID2}"', call_id="c2")
    )
    assert decision.removals == ()
    assert sorted(reg.bindings) == [UUID1, UUID2]


def test_deregistration_of_a_push_binding_needs_no_valid_push_params() -> None:
    reg = Registry()
    reg.send(register(f'<sip:alice@h;{APNS}>;+sip.instance="{UUID1}"'))
    decision = reg.send(
        register(f'<sip:alice@h;pn-provider=nope>;+sip.instance="{UUID1}";expires=0', cseq=2)
    )
    assert decision.status == 200
    assert reg.bindings == {}


def test_path_is_stored_and_echoed() -> None:
    reg = Registry()
    path = [("Path", "<sip:edge1.example.org;lr>"), ("Path", "<sip:edge2.example.org;lr>")]
    decision = reg.send(register("<sip:alice@192.0.2.10>", extra=path))
    assert decision.upserts[0].path == (
        "<sip:edge1.example.org;lr>",
        "<sip:edge2.example.org;lr>",
    )
    assert header(decision, "Path") == ["<sip:edge1.example.org;lr>", "<sip:edge2.example.org;lr>"]


def test_gruu_is_returned_when_the_ua_supports_it() -> None:
    reg = Registry()
    contact = f'<sip:alice@192.0.2.10>;+sip.instance="{UUID1}"'
    decision = reg.send(register(contact, extra=[("Supported", "path, gruu")]))
    gruu = "sip:alice@example.org;gr=urn:uuid:00000000-0000-0000-0000-000000000001"
    assert header(decision, "Contact") == [
        f'<sip:alice@192.0.2.10>;expires=3600;+sip.instance="{UUID1}";pub-gruu="{gruu}"'
    ]
    assert decision.upserts[0].pub_gruu == gruu
    assert gruu_instance(parse_uri(gruu)) == ("sip:alice@example.org", UUID1)
    assert gruu_instance(parse_uri(gruu.upper().replace("SIP:", "sip:"))) == (
        "sip:ALICE@example.org",
        UUID1,
    )


def test_no_gruu_without_supported_gruu_or_instance() -> None:
    reg = Registry()
    decision = reg.send(register(f'<sip:alice@h1>;+sip.instance="{UUID1}"', "<sip:alice@h2>"))
    assert all("pub-gruu" not in c for c in header(decision, "Contact"))
    assert gruu_instance(parse_uri("sip:alice@example.org")) is None
    assert reg.bindings["sip:alice@h2"].pub_gruu is None


def test_drop_dead_token_keeps_the_other_service() -> None:
    reg = Registry()
    reg.send(register(f"<sip:alice@192.0.2.10;{APNS_DEV}>"))
    (binding,) = reg.bindings.values()
    left = drop_dead_token(binding, "00aa11bb")
    assert left.push is not None and left.push.tokens == (("remote", "22cc33dd"),)
    assert left.tokens == {"22cc33dd"}
    gone = drop_dead_token(left, "22cc33dd")
    assert gone.push is None and gone.tokens == frozenset()
    assert drop_dead_token(gone, "22cc33dd") is gone
