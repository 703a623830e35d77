"""Push payload building: a PushRequest in, a provider-ready APNs or FCM push out.

Pure: no clock (``now`` is UNIX seconds passed in), no I/O, no logging. The
proxy fills a ``PushRequest`` with plain values; ``build_apns`` and
``build_fcm`` decide the push type, topic, priority, expiry and payload.

Rules (see PUSH-PROTOCOLS.md):

- Incoming call, iOS with a VoIP token (``service=VOIP``): VoIP push, topic
  ``<bundle>.voip``. Without one: alert push (``loc-key`` IC_MSG, collapse id
  = Call-ID). VoIP pushes are for calls only: iOS 13+ kills an app that gets
  a VoIP push it does not report to CallKit.
- MESSAGE: alert push (IM_MSG, ``mutable-content`` 1).
- Missed call: alert push (IC_MISSED, or "Accepted elsewhere" / "Declined
  elsewhere" from the CANCEL's Reason, RFC 3326), same collapse id as the call.
- Binding refresh (RFC 8599 §5.5): background push, priority 5, no alert.
- Android: an FCM data-only message (string values), priority high.

Every payload carries ``call_id``, ``chat_room_addr`` (when given),
``from_uri``, ``display_name``, ``uuid`` (the binding's instance) and
``send_time``. A per-app ``PayloadTemplate`` renames, drops or adds these
top-level keys. Payloads are kept under the provider's size limit by trimming
display text (then the caller URI), never by failing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

# APNs payload limits (bytes): 4 KB, 5 KB for VoIP pushes.
APNS_MAX_PAYLOAD = 4096
APNS_MAX_VOIP_PAYLOAD = 5120
# FCM: the data payload of a message may not exceed 4096 bytes.
FCM_MAX_DATA = 4096
# APNs: apns-collapse-id may not exceed 64 bytes.
APNS_MAX_COLLAPSE_ID = 64

ELLIPSIS = "\u2026"
STANDARD_KEYS = ("call_id", "chat_room_addr", "from_uri", "display_name", "uuid", "send_time")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


class PayloadError(ValueError):
    """The request cannot be turned into a push (a bug in the caller, not in the token)."""


class PushKind(Enum):
    """Why the phone is woken."""

    CALL = "call"
    MESSAGE = "message"
    MISSED_CALL = "missed_call"
    REFRESH = "refresh"


class PushService(Enum):
    """Which of a Linphone binding's tokens ``PushRequest.token`` is (RFC 8599 pn-param)."""

    VOIP = "voip"
    REMOTE = "remote"


class ApnsPushType(Enum):
    """Value of the ``apns-push-type`` header."""

    VOIP = "voip"
    ALERT = "alert"
    BACKGROUND = "background"


@dataclass(frozen=True)
class PushRequest:
    """One push to one device token, as decided by the proxy.

    ``provider`` is "apns" or "fcm"; ``app_id`` the bundle id (APNs) or the
    Firebase project id (FCM); ``deadline`` the UNIX time after which the push
    is useless (call timeout, message delivery, binding expiry). ``sequence``
    numbers repeats of one push (0: the first): a repeated ringing alert is a new
    push to the provider under the same collapse id, so the phone updates the
    notification it shows instead of stacking another one.
    """

    kind: PushKind
    provider: str
    token: str
    app_id: str
    deadline: float
    team_id: str | None = None
    service: PushService = PushService.REMOTE
    sandbox: bool = False
    caller_uri: str = ""
    caller_display: str = ""
    call_id: str = ""
    chat_room_addr: str | None = None
    instance: str = ""
    collapse_id: str | None = None
    cancel_reason: str | None = None
    sequence: int = 0


@dataclass(frozen=True)
class PayloadTemplate:
    """Per-app changes to the top-level custom keys: a flat ``{key: value}`` mapping.

    For each entry, in order:

    - ``""`` removes ``key`` from the payload;
    - exactly one placeholder, e.g. ``"call-id": "{call_id}"``, *moves* that
      standard field to ``key`` (the standard name disappears unless it is
      itself a template key; an absent ``chat_room_addr`` stays absent);
    - anything else adds ``key`` with the text, placeholders filled in
      (``{call_id}``, ``{chat_room_addr}``, ``{from_uri}``, ``{display_name}``,
      ``{uuid}``, ``{send_time}``, ``{kind}``; ``{{`` for a literal brace).

    Keys starting with ``@`` are settings, not payload keys: ``@call_sound``
    and ``@message_sound`` set the alert sound (default "default").
    Linphone-style names, for example::

        payload_template:
          call-id: "{call_id}"
          from-uri: "{from_uri}"
          display-name: "{display_name}"
          send-time: "{send_time}"
          chat-room-addr: "{chat_room_addr}"
          "@call_sound": ring.caf
    """

    entries: tuple[tuple[str, str], ...] = ()
    call_sound: str = "default"
    message_sound: str = "default"

    @classmethod
    def from_mapping(cls, raw: Mapping[str, str] | None) -> PayloadTemplate:
        """Build a template from its config mapping; raises PayloadError naming a bad entry."""
        settings = {"@call_sound": "default", "@message_sound": "default"}
        entries: list[tuple[str, str]] = []
        placeholders = dict.fromkeys((*STANDARD_KEYS, "kind"), "")
        for key, value in (raw or {}).items():
            if key.startswith("@"):
                if key not in settings:
                    raise PayloadError(f"payload_template: unknown setting {key!r}")
                settings[key] = value
                continue
            if key == "aps":
                raise PayloadError("payload_template: 'aps' is reserved for APNs")
            try:
                value.format_map(placeholders)
            except (KeyError, ValueError, IndexError) as exc:
                raise PayloadError(f"payload_template.{key}: bad placeholder {exc}") from exc
            entries.append((key, value))
        return cls(tuple(entries), settings["@call_sound"], settings["@message_sound"])

    def apply(self, fields: Mapping[str, str], kind: PushKind) -> dict[str, str]:
        """The custom keys after the template's removals, moves and additions."""
        out = dict(fields)
        values = {**dict.fromkeys(STANDARD_KEYS, ""), **fields, "kind": kind.value}
        own = {key for key, _ in self.entries}
        for key, value in self.entries:
            moved = _PLACEHOLDER.fullmatch(value)
            if value == "":
                out.pop(key, None)
            elif moved and moved.group(1) in STANDARD_KEYS:
                name = moved.group(1)
                if name in fields:
                    out[key] = fields[name]
                if name not in own:
                    out.pop(name, None)
            else:
                out[key] = value.format_map(values)
        return out


@dataclass(frozen=True)
class ApnsPush:
    """What goes on the wire for one APNs request (headers + JSON body)."""

    push_type: ApnsPushType
    topic: str
    priority: int
    expiration: int
    collapse_id: str | None
    payload: Mapping[str, Any]

    def body(self) -> bytes:
        """The JSON body, encoded as aioapns sends it."""
        return encode_json(self.payload)


@dataclass(frozen=True)
class FcmPush:
    """The FCM HTTP v1 message for one token (data-only, string values)."""

    data: Mapping[str, str]
    ttl: int
    priority: str = "high"
    collapse_key: str | None = None

    def message(self, token: str) -> dict[str, Any]:
        """The request body for ``messages:send``."""
        android: dict[str, Any] = {"priority": self.priority, "ttl": f"{self.ttl}s"}
        if self.collapse_key:
            android["collapse_key"] = self.collapse_key
        return {"message": {"token": token, "data": dict(self.data), "android": android}}


# json.dumps with a non-default option builds an encoder per call: one, made once.
_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False)


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Encode like aioapns does (default separators, UTF-8): the bytes APNs measures."""
    return _JSON_ENCODER.encode(payload).encode()


# The last second formatted, and its text: pushes come many to the second.
_send_time_cache: list[tuple[int, str]] = [(0, "1970-01-01 00:00:00")]


def send_time_text(now: float) -> str:
    """``send_time`` value: UTC, "YYYY-mm-dd HH:MM:SS" (the form Linphone apps parse)."""
    second = math.floor(now)
    # Within half a microsecond of the next second, fromtimestamp rounds up to it.
    cacheable = now - second < 0.9999995
    if cacheable and _send_time_cache[0][0] == second:
        return _send_time_cache[0][1]
    text = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S")
    if cacheable:
        _send_time_cache[0] = (second, text)
    return text


# RFC 3326 §2: Reason: SIP ;cause=200 ;text="Call completed elsewhere"
_SIP_CAUSE = re.compile(r"(?i)(?:^|,)\s*SIP\s*;[^,]*?\bcause\s*=\s*(\d{3})")


def reason_cause(reason: str | None) -> int | None:
    """The SIP cause code of a Reason header value (RFC 3326), or None."""
    if not reason:
        return None
    match = _SIP_CAUSE.search(reason)
    return int(match.group(1)) if match else None


def missed_call_loc_key(reason: str | None) -> str:
    """Alert text key for a cancelled call: answered / declined on another device, or missed."""
    cause = reason_cause(reason)
    if cause == 200:  # RFC 3326 / RFC 3261 §9.1: "Call completed elsewhere"
        return "Accepted elsewhere"
    if cause == 603:
        return "Declined elsewhere"
    return "IC_MISSED"


def collapse_id_for(request: PushRequest) -> str | None:
    """The collapse id: given, or the Call-ID for call alerts; hashed when over 64 bytes."""
    value = request.collapse_id
    if value is None and request.kind in (PushKind.CALL, PushKind.MISSED_CALL):
        value = request.call_id or None
    if value is None:
        return None
    if len(value.encode()) > APNS_MAX_COLLAPSE_ID:
        return hashlib.sha256(value.encode()).hexdigest()
    return value


def apns_push_type(request: PushRequest) -> ApnsPushType:
    """VoIP for calls to a VoIP token, background for refreshes, alert otherwise."""
    if request.kind is PushKind.REFRESH:
        if request.service is PushService.VOIP:
            raise PayloadError("a binding refresh cannot use a VoIP token (background push)")
        return ApnsPushType.BACKGROUND
    if request.service is PushService.VOIP:
        if request.kind is not PushKind.CALL:
            # iOS 13+ kills apps that get a VoIP push they do not report as a call.
            raise PayloadError(f"{request.kind.value} pushes cannot use a VoIP token")
        return ApnsPushType.VOIP
    return ApnsPushType.ALERT


def _custom_fields(request: PushRequest, now: float, display: str, uri: str) -> dict[str, str]:
    fields = {"call_id": request.call_id}
    if request.chat_room_addr:
        fields["chat_room_addr"] = request.chat_room_addr
    fields.update(
        from_uri=uri, display_name=display, uuid=request.instance, send_time=send_time_text(now)
    )
    return fields


def _loc_key(request: PushRequest) -> str:
    if request.kind is PushKind.MESSAGE:
        return "IM_MSG"
    if request.kind is PushKind.MISSED_CALL:
        return missed_call_loc_key(request.cancel_reason)
    return "IC_MSG"


def _aps(
    request: PushRequest, push_type: ApnsPushType, caller: str, tpl: PayloadTemplate
) -> dict[str, Any]:
    if push_type is ApnsPushType.BACKGROUND:
        return {"content-available": 1}
    aps: dict[str, Any] = {"alert": {"loc-key": _loc_key(request), "loc-args": [caller]}}
    if push_type is ApnsPushType.VOIP:
        return aps
    if request.kind is PushKind.MESSAGE:
        aps["sound"] = tpl.message_sound
        aps["mutable-content"] = 1  # lets a Notification Service Extension fetch the message
    else:
        aps["sound"] = tpl.call_sound
    return aps


def build_apns(
    request: PushRequest, now: float, template: PayloadTemplate | None = None
) -> ApnsPush:
    """The APNs push for ``request`` at time ``now``; raises PayloadError on a caller bug."""
    tpl = template or PayloadTemplate()
    push_type = apns_push_type(request)
    limit = APNS_MAX_VOIP_PAYLOAD if push_type is ApnsPushType.VOIP else APNS_MAX_PAYLOAD

    def build(display: str, uri: str) -> dict[str, Any]:
        custom = tpl.apply(_custom_fields(request, now, display, uri), request.kind)
        return {"aps": _aps(request, push_type, display or uri, tpl), **custom}

    payload = _fit(build, request.caller_display, request.caller_uri, limit)
    topic = request.app_id + ".voip" if push_type is ApnsPushType.VOIP else request.app_id
    return ApnsPush(
        push_type=push_type,
        topic=topic,
        # APNs: priority 10 with a background push is an error.
        priority=5 if push_type is ApnsPushType.BACKGROUND else 10,
        expiration=max(0, int(request.deadline)),
        collapse_id=collapse_id_for(request),
        payload=payload,
    )


def build_fcm(request: PushRequest, now: float, template: PayloadTemplate | None = None) -> FcmPush:
    """The FCM data message for ``request`` at time ``now``."""
    tpl = template or PayloadTemplate()

    def build(display: str, uri: str) -> dict[str, Any]:
        data = {"kind": request.kind.value}
        if request.kind is not PushKind.REFRESH:
            data["loc_key"] = _loc_key(request)
        data.update(tpl.apply(_custom_fields(request, now, display, uri), request.kind))
        return data

    data = _fit(build, request.caller_display, request.caller_uri, FCM_MAX_DATA)
    return FcmPush(
        data={str(k): str(v) for k, v in data.items()},
        ttl=max(0, math.ceil(request.deadline - now)),
        collapse_key=collapse_id_for(request),
    )


def _fit(
    build: Callable[[str, str], dict[str, Any]], display: str, uri: str, limit: int
) -> dict[str, Any]:
    """Build, trimming the display name first and the caller URI second until under ``limit``."""
    payload = build(display, uri)
    if len(encode_json(payload)) <= limit:
        return payload
    display = _longest_fitting(lambda text: build(text, uri), display, limit)
    payload = build(display, uri)
    if len(encode_json(payload)) <= limit:
        return payload
    uri = _longest_fitting(lambda text: build(display, text), uri, limit)
    return build(display, uri)


def _longest_fitting(build: Callable[[str], dict[str, Any]], text: str, limit: int) -> str:
    """The longest prefix of ``text`` (with an ellipsis) whose payload fits; "" if none does."""
    low, high = 0, len(text)  # invariant: prefix of length `low` fits (or low == 0)
    while low < high:
        mid = (low + high + 1) // 2
        if len(encode_json(build(_cut(text, mid)))) <= limit:
            low = mid
        else:
            high = mid - 1
    return _cut(text, low)


def _cut(text: str, length: int) -> str:
    if length >= len(text):
        return text
    return text[:length] + ELLIPSIS if length else ""


__all__ = [
    "APNS_MAX_PAYLOAD",
    "APNS_MAX_VOIP_PAYLOAD",
    "FCM_MAX_DATA",
    "ApnsPush",
    "ApnsPushType",
    "FcmPush",
    "PayloadError",
    "PayloadTemplate",
    "PushKind",
    "PushRequest",
    "PushService",
    "apns_push_type",
    "build_apns",
    "build_fcm",
    "collapse_id_for",
    "encode_json",
    "missed_call_loc_key",
    "reason_cause",
    "send_time_text",
]
