"""MESSAGE routing rules: what is stored and pushed, device outcomes, stored records."""

from __future__ import annotations

import pytest

from sipushd.core.messages import (
    DeliveryOutcome,
    Device,
    MessageKind,
    StoredMessage,
    chat_room_address,
    classify,
    delivery_outcome,
    inner_content_type,
    media_type,
    message_id,
    plan_message,
    with_date,
)
from sipushd.sip import Headers, Request, parse_message, parse_uri

AOR = "sip:alice@example.org"


def message(
    content_type: str | None = "text/plain",
    body: bytes = b"hello",
    *,
    extra: list[tuple[str, str]] | None = None,
    cseq: int = 1,
) -> Request:
    items = [
        ("Via", "SIP/2.0/TCP 192.0.2.9:5060;branch=z9hG4bK-1;received=192.0.2.99"),
        ("Max-Forwards", "70"),
        ("From", '"Bob" <sip:bob@example.net>;tag=ft1'),
        ("To", f"<{AOR}>"),
        ("Call-ID", "msg-call-1"),
        ("CSeq", f"{cseq} MESSAGE"),
    ]
    if content_type is not None:
        items.append(("Content-Type", content_type))
    items += extra or []
    return Request("MESSAGE", parse_uri(AOR), Headers(items), body)


def cpim(inner: str) -> bytes:
    return (
        "From: <sip:bob@example.net>\r\nTo: <sip:alice@example.org>\r\n"
        "DateTime: 2026-11-22T10:00:00Z\r\n\r\n"
        f"Content-Type: {inner}\r\n\r\n<x/>"
    ).encode()


@pytest.mark.parametrize(
    ("content_type", "body", "kind"),
    [
        ("text/plain", b"hi", MessageKind.STORED),
        ("text/plain;charset=UTF-8", b"hi", MessageKind.STORED),
        ("application/vnd.gsma.rcs-ft-http+xml", b"<x/>", MessageKind.STORED),
        (None, b"", MessageKind.STORED),
        ("application/im-iscomposing+xml", b"<isComposing/>", MessageKind.TRANSIENT),
        ("Application/IM-IsComposing+XML; charset=utf-8", b"<x/>", MessageKind.TRANSIENT),
        ("message/imdn+xml", b"<imdn/>", MessageKind.TRANSIENT),
        ("message/cpim", cpim("message/imdn+xml"), MessageKind.TRANSIENT),
        ("message/cpim", cpim("application/im-iscomposing+xml"), MessageKind.TRANSIENT),
        ("message/cpim", cpim("text/plain; charset=utf-8"), MessageKind.STORED),
        ("message/cpim", b"not cpim at all", MessageKind.STORED),
    ],
)
def test_classify(content_type: str | None, body: bytes, kind: MessageKind) -> None:
    assert classify(message(content_type, body)) is kind


def test_media_type_and_cpim_inner_type() -> None:
    assert media_type(" Text/Plain ; charset=x") == "text/plain"
    assert media_type(None) == ""
    assert inner_content_type(cpim("Message/IMDN+xml").replace(b"\r\n", b"\n")) == (
        "message/imdn+xml"
    )
    assert inner_content_type(b"") == ""


def devices(*specs: tuple[str, bool, bool]) -> list[Device]:
    return [Device(key, online=online, wake=wake) for key, online, wake in specs]


def test_no_device_gets_480_at_once() -> None:
    for kind in MessageKind:
        plan = plan_message(kind, [], store_full=False)
        assert plan.reject == (480, "Temporarily Unavailable")
        assert not plan.store


def test_an_instant_message_is_stored_for_every_device_and_pushed_to_sleepers() -> None:
    found = devices(("desk", True, False), ("phone", False, True), ("old", False, False))
    plan = plan_message(MessageKind.STORED, found, store_full=False)
    assert plan.forward == ("desk",)
    assert plan.push == ("phone",)
    assert plan.recipients == ("desk", "phone", "old")
    assert plan.store and plan.reject is None


def test_is_composing_goes_to_online_devices_only_and_is_never_stored_or_pushed() -> None:
    found = devices(("desk", True, False), ("phone", False, True))
    plan = plan_message(MessageKind.TRANSIENT, found, store_full=False)
    assert (plan.forward, plan.push, plan.store) == (("desk",), (), False)
    asleep = plan_message(MessageKind.TRANSIENT, devices(("phone", False, True)), store_full=False)
    assert asleep.reject == (480, "Temporarily Unavailable")
    assert (asleep.push, asleep.store) == ((), False)


def test_a_full_store_forwards_to_online_devices_or_refuses() -> None:
    found = devices(("desk", True, False), ("phone", False, True))
    plan = plan_message(MessageKind.STORED, found, store_full=True)
    assert (plan.forward, plan.push, plan.store, plan.reject) == (("desk",), (), False, None)
    refused = plan_message(MessageKind.STORED, devices(("phone", False, True)), store_full=True)
    assert refused.reject == (486, "Message Store Full")


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, DeliveryOutcome.DELIVERED),
        (202, DeliveryOutcome.DELIVERED),
        (None, DeliveryOutcome.RETRY),
        (408, DeliveryOutcome.RETRY),
        (430, DeliveryOutcome.RETRY),  # the node holding its flow lost it (RFC 5626 §5.3)
        (480, DeliveryOutcome.RETRY),
        (503, DeliveryOutcome.RETRY),
        (415, DeliveryOutcome.REFUSED),
        (403, DeliveryOutcome.REFUSED),
        (603, DeliveryOutcome.REFUSED),
        (500, DeliveryOutcome.REFUSED),
    ],
)
def test_delivery_outcome(status: int | None, outcome: DeliveryOutcome) -> None:
    assert delivery_outcome(status) is outcome


def test_stored_message_keeps_the_whole_request_and_its_metadata() -> None:
    request = message(extra=[("Subject", "lunch")])
    stored = StoredMessage.from_request("id1", AOR, request, 1000.0, 60.0)
    assert stored.request() == parse_message(request.to_bytes())
    assert (stored.call_id, stored.sender, stored.aor) == ("msg-call-1", "sip:bob@example.net", AOR)
    assert (stored.arrived_at, stored.expires_at) == (1000.0, 1060.0)
    assert stored.chat_room_addr is None
    assert not stored.expired(1059.9)
    assert stored.expired(1060.0)


def test_a_message_from_a_conference_focus_names_its_chat_room() -> None:
    request = message(extra=[("Contact", "<sip:conf@example.net;transport=tcp>;isfocus")])
    assert chat_room_address(request) == "sip:bob@example.net"
    assert chat_room_address(message()) is None


def test_message_id_is_stable_for_a_resent_message_and_differs_per_request() -> None:
    assert message_id(AOR, message()) == message_id(AOR, message())
    assert message_id(AOR, message()) != message_id(AOR, message(cseq=2))
    assert message_id(AOR, message()) != message_id("sip:carol@example.org", message())


def test_with_date_keeps_the_senders_date_or_adds_the_arrival_time() -> None:
    sent = "Sat, 21 Nov 2026 09:00:00 GMT"
    dated = message(extra=[("Date", sent)])
    assert with_date(dated, 0.0).headers.get("Date") == sent
    # 2026-11-22 10:00:00 UTC
    assert with_date(message(), 1795341600.0).headers.get("Date") == (
        "Sun, 22 Nov 2026 10:00:00 GMT"
    )
