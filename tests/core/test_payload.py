"""Payload builders: push type, topic, priority, expiry, keys, templates, trimming."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipushd.core.payload import (
    APNS_MAX_PAYLOAD,
    APNS_MAX_VOIP_PAYLOAD,
    FCM_MAX_DATA,
    ApnsPushType,
    PayloadError,
    PayloadTemplate,
    PushKind,
    PushRequest,
    PushService,
    build_apns,
    build_fcm,
    collapse_id_for,
    encode_json,
    missed_call_loc_key,
    reason_cause,
    send_time_text,
)

NOW = 1_700_000_000.0


def request(kind: PushKind = PushKind.CALL, **changes: object) -> PushRequest:
    values: dict[str, object] = {
        "kind": kind,
        "provider": "apns",
        "token": "ab" * 32,
        "app_id": "org.example.app",
        "deadline": NOW + 90.5,
        "team_id": "ABCD1234",
        "caller_uri": "sip:alice@example.org",
        "caller_display": "Alice",
        "call_id": "call-1@example.org",
        "instance": "<urn:uuid:00000000-0000-0000-0000-000000000001>",
    }
    values.update(changes)
    return PushRequest(**values)  # type: ignore[arg-type]


def test_call_with_voip_token_is_a_voip_push() -> None:
    push = build_apns(request(service=PushService.VOIP), NOW)
    assert push.push_type is ApnsPushType.VOIP
    assert push.topic == "org.example.app.voip"
    assert push.priority == 10
    assert push.expiration == int(NOW + 90.5)
    assert push.collapse_id == "call-1@example.org"  # a repeated VoIP push reaches CallKit once
    assert push.payload["call_id"] == "call-1@example.org"
    assert push.payload["from_uri"] == "sip:alice@example.org"
    assert push.payload["display_name"] == "Alice"
    assert push.payload["uuid"] == "<urn:uuid:00000000-0000-0000-0000-000000000001>"
    assert push.payload["send_time"] == "2023-11-14 22:13:20"
    assert "chat_room_addr" not in push.payload


def test_call_without_voip_token_is_an_alert_collapsed_on_call_id() -> None:
    push = build_apns(request(), NOW)
    assert push.push_type is ApnsPushType.ALERT
    assert push.topic == "org.example.app"
    assert push.priority == 10
    assert push.collapse_id == "call-1@example.org"
    aps = push.payload["aps"]
    assert aps["alert"] == {"loc-key": "IC_MSG", "loc-args": ["Alice"]}
    assert aps["sound"] == "default"
    assert "mutable-content" not in aps


def test_a_repeated_ringing_alert_keeps_the_collapse_id_and_payload() -> None:
    first = build_apns(request(), NOW)
    repeat = build_apns(request(sequence=2), NOW)
    assert repeat.collapse_id == first.collapse_id == "call-1@example.org"
    assert repeat.payload == first.payload
    assert build_fcm(request(sequence=2), NOW).collapse_key == "call-1@example.org"


def test_caller_uri_stands_in_for_a_missing_display_name() -> None:
    push = build_apns(request(caller_display=""), NOW)
    assert push.payload["aps"]["alert"]["loc-args"] == ["sip:alice@example.org"]
    assert push.payload["display_name"] == ""


def test_long_call_id_collapse_id_is_hashed_to_64_bytes() -> None:
    collapse = collapse_id_for(request(call_id="x" * 100))
    assert collapse is not None and len(collapse) == 64
    assert collapse != "x" * 64
    assert collapse_id_for(request(collapse_id="given")) == "given"


def test_message_is_a_mutable_alert_with_chat_room() -> None:
    req = request(PushKind.MESSAGE, chat_room_addr="sip:room@conf.example.org", call_id="m1")
    push = build_apns(req, NOW)
    assert push.push_type is ApnsPushType.ALERT
    aps = push.payload["aps"]
    assert aps["alert"] == {"loc-key": "IM_MSG", "loc-args": ["Alice"]}
    assert aps["mutable-content"] == 1
    assert push.payload["chat_room_addr"] == "sip:room@conf.example.org"
    assert push.payload["call_id"] == "m1"
    assert push.collapse_id is None


@pytest.mark.parametrize(
    ("reason", "loc_key"),
    [
        (None, "IC_MISSED"),
        ('SIP;cause=200;text="Call completed elsewhere"', "Accepted elsewhere"),
        ('SIP ;cause=603 ;text="Declined"', "Declined elsewhere"),
        ('Q.850;cause=16, SIP;cause=200;text="x"', "Accepted elsewhere"),
        ("Q.850;cause=200", "IC_MISSED"),
        ("SIP;cause=487", "IC_MISSED"),
    ],
)
def test_missed_call_text_follows_the_cancel_reason(reason: str | None, loc_key: str) -> None:
    assert missed_call_loc_key(reason) == loc_key
    push = build_apns(request(PushKind.MISSED_CALL, cancel_reason=reason), NOW)
    assert push.push_type is ApnsPushType.ALERT
    assert push.payload["aps"]["alert"]["loc-key"] == loc_key
    assert push.collapse_id == "call-1@example.org"  # replaces the incoming-call alert


def test_reason_cause() -> None:
    assert reason_cause('SIP;cause=200;text="Call completed elsewhere"') == 200
    assert reason_cause('sip; text="a"; cause=603') == 603
    assert reason_cause("Q.850;cause=16") is None
    assert reason_cause("") is None


def test_refresh_is_a_silent_background_push() -> None:
    push = build_apns(request(PushKind.REFRESH, call_id=""), NOW)
    assert push.push_type is ApnsPushType.BACKGROUND
    assert push.priority == 5
    assert push.payload["aps"] == {"content-available": 1}
    assert push.topic == "org.example.app"


@pytest.mark.parametrize("kind", [PushKind.MESSAGE, PushKind.MISSED_CALL, PushKind.REFRESH])
def test_voip_token_is_refused_for_anything_but_a_call(kind: PushKind) -> None:
    with pytest.raises(PayloadError):
        build_apns(request(kind, service=PushService.VOIP), NOW)


def test_fcm_data_message() -> None:
    req = request(provider="fcm", app_id="my-project", chat_room_addr="sip:room@x")
    push = build_fcm(req, NOW)
    body = push.message("tok")
    message = body["message"]
    assert message["token"] == "tok"
    assert message["android"] == {
        "priority": "high",
        "ttl": "91s",
        "collapse_key": "call-1@example.org",
    }
    data = message["data"]
    assert all(isinstance(v, str) for v in data.values())
    assert data["kind"] == "call"
    assert data["loc_key"] == "IC_MSG"
    for key in ("call_id", "chat_room_addr", "from_uri", "display_name", "uuid", "send_time"):
        assert key in data
    assert "notification" not in message


def test_fcm_ttl_never_negative() -> None:
    assert build_fcm(request(provider="fcm", deadline=NOW - 5), NOW).ttl == 0


def test_template_moves_drops_and_adds_keys() -> None:
    template = PayloadTemplate.from_mapping(
        {
            "call-id": "{call_id}",
            "from-uri": "{from_uri}",
            "chat-room-addr": "{chat_room_addr}",
            "send_time": "",
            "app": "linphone {kind}",
            "literal": "{{x}}",
            "@call_sound": "ring.caf",
        }
    )
    push = build_apns(request(), NOW, template)
    payload = push.payload
    assert payload["call-id"] == "call-1@example.org"
    assert payload["from-uri"] == "sip:alice@example.org"
    assert "call_id" not in payload and "from_uri" not in payload
    assert "send_time" not in payload
    assert "chat-room-addr" not in payload  # absent stays absent
    assert payload["app"] == "linphone call"
    assert payload["literal"] == "{x}"
    assert payload["display_name"] == "Alice"
    assert payload["aps"]["sound"] == "ring.caf"
    fcm = build_fcm(request(provider="fcm"), NOW, template)
    assert fcm.data["call-id"] == "call-1@example.org"


def test_template_can_copy_a_field_under_both_names() -> None:
    template = PayloadTemplate.from_mapping({"sip-from": "{from_uri}", "from_uri": "{from_uri}"})
    payload = build_apns(request(), NOW, template).payload
    assert payload["sip-from"] == payload["from_uri"] == "sip:alice@example.org"


@pytest.mark.parametrize(
    "raw", [{"x": "{nope}"}, {"x": "{"}, {"@volume": "3"}, {"aps": "{call_id}"}]
)
def test_bad_templates_are_refused(raw: dict[str, str]) -> None:
    with pytest.raises(PayloadError):
        PayloadTemplate.from_mapping(raw)


def test_long_display_name_is_trimmed_to_fit() -> None:
    push = build_apns(request(caller_display="Ä" * 5000), NOW)
    size = len(push.body())
    assert size <= APNS_MAX_PAYLOAD
    assert size > APNS_MAX_PAYLOAD - 16  # trimmed, not emptied
    display = push.payload["display_name"]
    assert display.endswith("\u2026") and display.startswith("ÄÄÄ")
    assert push.payload["aps"]["alert"]["loc-args"] == [display]
    assert push.payload["call_id"] == "call-1@example.org"


def test_voip_pushes_may_use_5120_bytes() -> None:
    push = build_apns(request(service=PushService.VOIP, caller_display="a" * 6000), NOW)
    assert APNS_MAX_PAYLOAD < len(push.body()) <= APNS_MAX_VOIP_PAYLOAD


def test_long_uri_is_trimmed_when_display_text_is_not_enough() -> None:
    push = build_apns(request(caller_display="", caller_uri="sip:" + "b" * 5000 + "@x"), NOW)
    assert len(push.body()) <= APNS_MAX_PAYLOAD
    assert push.payload["from_uri"].endswith("\u2026")


def test_fcm_payload_is_trimmed_too() -> None:
    push = build_fcm(request(provider="fcm", caller_display="z" * 9000), NOW)
    assert len(encode_json(push.data)) <= FCM_MAX_DATA


def test_small_payloads_are_untouched() -> None:
    push = build_apns(request(caller_display='Bob "the" Builder'), NOW)
    assert json.loads(push.body())["display_name"] == 'Bob "the" Builder'


def test_send_time_is_utc() -> None:
    assert send_time_text(0.0) == "1970-01-01 00:00:00"


@given(st.floats(min_value=0, max_value=4e9), st.sampled_from([0.0, 0.4, 0.9999995, 0.9999999]))
def test_send_time_from_the_last_second_cache_matches_formatting(now: float, step: float) -> None:
    # The same second twice (cached the second time), then near the next second's rounding.
    for moment in (now, now, math.floor(now) + step):
        expected = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")
        assert send_time_text(moment) == expected


@settings(max_examples=60, deadline=None)
@given(
    display=st.text(min_size=0, max_size=3000),
    uri=st.text(min_size=0, max_size=3000),
    kind=st.sampled_from([PushKind.CALL, PushKind.MESSAGE, PushKind.MISSED_CALL]),
)
def test_payload_always_fits(display: str, uri: str, kind: PushKind) -> None:
    req = request(kind, caller_display=display, caller_uri=uri)
    assert len(build_apns(req, NOW).body()) <= APNS_MAX_PAYLOAD
    assert len(encode_json(build_fcm(req, NOW).data)) <= FCM_MAX_DATA
