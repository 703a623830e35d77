"""MESSAGE store-and-forward decisions (RFC 3428): what is kept, for whom, and until when.

Pure: no clock (``now`` is passed in), no I/O, no logging. Rules:

- Instant messages are stored for the devices (bindings) of the target AOR and pushed to
  the sleeping ones; is-composing indications (RFC 3994) and disposition notifications
  (RFC 5438, IMDN), bare or wrapped in CPIM (RFC 3862), are forwarded to online devices
  only: they are worthless later and must never wake a phone.
- The devices bound when a MESSAGE arrives are its recipients. A device that registers
  for the first time while the MESSAGE is still stored (some recipient has not got it
  yet) gets it too; once every known device is done the MESSAGE leaves the store.
- A device is done with a MESSAGE when it answers 2xx, or refuses it for good (a final
  answer other than 408 / 430 / 480 / 503). Timeouts, transport errors, 408, 430 (the
  node holding its flow lost it, RFC 5626 §5.3), 480 and 503 keep it pending: it is
  sent again the next time the device registers.
- A MESSAGE expires ``delivery_timeout`` seconds after it arrived.
- A stored MESSAGE goes to the device as a new request (RFC 3261 §16.6 rules applied by
  the proxy helpers); the original ``Date`` is kept, and added from the arrival time when
  the sender sent none (RFC 3261 §20.17), so the phone shows when it was sent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email.utils import formatdate
from enum import Enum

from sipushd.sip import Request, SipParseError, parse_message

__all__ = [
    "TRANSIENT_CONTENT_TYPES",
    "DeliveryOutcome",
    "Device",
    "MessageKind",
    "MessagePlan",
    "MessageSettings",
    "StoredMessage",
    "chat_room_address",
    "classify",
    "delivery_outcome",
    "in_arrival_order",
    "inner_content_type",
    "media_type",
    "message_id",
    "plan_message",
    "with_date",
]

# RFC 3994 (is-composing) and RFC 5438 (IMDN): forwarded, never stored or pushed.
TRANSIENT_CONTENT_TYPES = frozenset({"application/im-iscomposing+xml", "message/imdn+xml"})
CPIM = "message/cpim"
# RFC 3261 §21, RFC 5626 §5.3: answers after which the device may still take it later.
RETRY_STATUSES = frozenset({408, 430, 480, 503})
# Parse stored requests whatever sip.max_message_size was when they were stored.
_MAX_STORED = 16 * 1024 * 1024 + 1


class MessageKind(Enum):
    """How a MESSAGE is routed."""

    STORED = "stored"  # an instant message: forward, push, keep until delivered
    TRANSIENT = "transient"  # is-composing / IMDN: forward to online devices only


class DeliveryOutcome(Enum):
    """What a device's answer means for its copy of a stored MESSAGE."""

    DELIVERED = "delivered"  # 2xx
    REFUSED = "refused"  # final non-2xx the device will give again: done, not retried
    RETRY = "retry"  # not reached (timeout, transport error, 408/480/503): keep pending


@dataclass(frozen=True)
class MessageSettings:
    """routing.message_accept_timeout / message_delivery_timeout / max_stored_messages_per_aor."""

    accept_timeout: float = 5.0
    delivery_timeout: float = 604800.0
    max_per_aor: int = 100


@dataclass(frozen=True)
class StoredMessage:
    """One MESSAGE kept for the devices of `aor`: the full request bytes plus metadata.

    `device` is set for a MESSAGE sent to one device's GRUU (RFC 5627): only that
    device gets it, however many others the AOR has.
    """

    id: str
    aor: str
    call_id: str
    sender: str
    arrived_at: float
    expires_at: float
    data: bytes
    chat_room_addr: str | None = None
    device: str | None = None

    @classmethod
    def from_request(
        cls,
        message_id: str,
        aor: str,
        request: Request,
        now: float,
        delivery_timeout: float,
        device: str | None = None,
    ) -> StoredMessage:
        """The record for `request`, arriving at `now`, kept for `delivery_timeout` seconds."""
        return cls(
            id=message_id,
            aor=aor,
            call_id=request.call_id,
            sender=str(request.from_.uri),
            arrived_at=now,
            expires_at=now + delivery_timeout,
            data=request.to_bytes(),
            chat_room_addr=chat_room_address(request),
            device=device,
        )

    def request(self) -> Request:
        """The stored request, parsed again; raises SipParseError on corrupt data."""
        message = parse_message(self.data, max_message_size=max(_MAX_STORED, len(self.data) + 1))
        if not isinstance(message, Request):
            raise SipParseError("stored message is not a request")
        return message

    def expired(self, now: float) -> bool:
        """True once the delivery timeout has passed."""
        return self.expires_at <= now


@dataclass(frozen=True)
class Device:
    """One binding of the target AOR as the MESSAGE router sees it."""

    key: str
    online: bool  # a live flow or a contact sipushd can reach now: forward to it
    wake: bool  # may be asleep and has a token for alert / data pushes: push it


@dataclass(frozen=True)
class MessagePlan:
    """What to do with an incoming MESSAGE (before any device answered)."""

    kind: MessageKind
    forward: tuple[str, ...] = ()  # device keys to send it to now
    push: tuple[str, ...] = ()  # device keys to wake with a push
    recipients: tuple[str, ...] = ()  # device keys it is stored for (empty: not stored)
    reject: tuple[int, str] | None = None  # answer the sender at once

    @property
    def store(self) -> bool:
        """True when the MESSAGE goes into the durable store."""
        return bool(self.recipients)


def message_id(target: str, request: Request) -> str:
    """A stable id for one MESSAGE to `target` (AOR or GRUU), from Call-ID, CSeq, From tag."""
    # A sender that resends the same MESSAGE in a new transaction keeps all three,
    # so the copy is recognised and stored once.
    parts = (target, request.call_id, str(request.cseq.seq), request.from_.tag or "")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


def media_type(content_type: str | None) -> str:
    """The `type/subtype` of a Content-Type value, lowercased, without parameters."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


def inner_content_type(body: bytes) -> str:
    """The media type a CPIM message (RFC 3862 §2) wraps, or "" when there is none."""
    text = body.decode("utf-8", "replace").replace("\r\n", "\n")
    # RFC 3862 §2: CPIM headers, a blank line, the MIME headers of the content.
    blocks = text.split("\n\n", 2)
    for block in blocks[:2]:
        for line in block.split("\n"):
            name, colon, value = line.partition(":")
            if colon and name.strip().lower() == "content-type":
                return media_type(value)
    return ""


def classify(request: Request) -> MessageKind:
    """TRANSIENT for is-composing and IMDN (bare or in CPIM), STORED for everything else."""
    content = media_type(request.content_type)
    if content == CPIM:
        content = inner_content_type(request.body)
    return MessageKind.TRANSIENT if content in TRANSIENT_CONTENT_TYPES else MessageKind.STORED


def chat_room_address(request: Request) -> str | None:
    """The chat room a MESSAGE comes from: the From URI of a conference focus (RFC 4579)."""
    try:
        contacts = request.contacts
        if any(c.uri.has_param("isfocus") or "isfocus" in dict(c.params) for c in contacts):
            return str(request.from_.uri)
    except SipParseError:
        return None
    return None


def plan_message(kind: MessageKind, devices: Sequence[Device], *, store_full: bool) -> MessagePlan:
    """Route one MESSAGE to the AOR's `devices` (RFC 3428, RFC 8599 §5.6.2)."""
    online = tuple(d.key for d in devices if d.online)
    if not devices:
        return MessagePlan(kind, reject=(480, "Temporarily Unavailable"))
    if kind is MessageKind.TRANSIENT or store_full:
        if online:
            return MessagePlan(kind, forward=online)
        if kind is MessageKind.TRANSIENT:
            # An is-composing / IMDN for a sleeping phone is dropped, never pushed.
            return MessagePlan(kind, reject=(480, "Temporarily Unavailable"))
        return MessagePlan(kind, reject=(486, "Message Store Full"))
    push = tuple(d.key for d in devices if d.wake)
    return MessagePlan(kind, forward=online, push=push, recipients=tuple(d.key for d in devices))


def delivery_outcome(status: int | None) -> DeliveryOutcome:
    """A device's final answer (None: timeout or transport error) for its stored copy."""
    if status is None or status in RETRY_STATUSES:
        return DeliveryOutcome.RETRY
    if 200 <= status < 300:
        return DeliveryOutcome.DELIVERED
    return DeliveryOutcome.REFUSED


def with_date(request: Request, arrived_at: float) -> Request:
    """`request` with a Date header: the sender's, else the arrival time (RFC 3261 §20.17)."""
    if "Date" in request.headers:
        return request
    return request.replace(headers=request.headers.add("Date", formatdate(arrived_at, usegmt=True)))


def in_arrival_order(messages: Iterable[StoredMessage]) -> list[StoredMessage]:
    """Oldest first; ties keep the given order."""
    return sorted(messages, key=lambda m: m.arrived_at)
