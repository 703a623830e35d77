"""Public vocabulary of the RFC 3261 §17 transaction layer: keys, states, timers, inputs, actions.

Everything here is a frozen value; the behaviour lives in `_txn_base`, `_txn_client`,
`_txn_server` and `transaction`. Inputs are past tense (what happened), actions are
imperative (what the caller must do next).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final

from sipushd.sip.addr import Endpoint
from sipushd.sip.message import Request, Response
from sipushd.sip.value import Value

# RFC 3261 §8.1.1.7: branches of RFC 3261 elements start with this magic cookie.
MAGIC_COOKIE = "z9hG4bK"


class TransactionError(Exception):
    """The TU asked for something the transaction state machine forbids."""


class KeyEnum(enum.Enum):
    """An enum hashed by identity: its members key the state tables and timers.

    Members are singletons and compare by identity, so the identity hash agrees with
    equality; Enum's own `__hash__` is a Python-level call on every table lookup.
    """

    __hash__ = object.__hash__


class Role(KeyEnum):
    """Which side of the transaction this element is on."""

    CLIENT = "client"
    SERVER = "server"


class TransactionKey(Value):
    """Identifies one transaction (RFC 3261 §17.1.3 client, §17.2.3 server).

    `method` is the transaction's method (an ACK is matched with method INVITE).
    `sent_by` is the top Via sent-by, used by server keys only. `legacy` holds the
    RFC 2543 fallback fields (Request-URI, To tag, From tag, Call-ID, CSeq number,
    top Via) of a server transaction whose branch lacks the magic cookie; else ().

    It keys the transaction table, so its hash is computed once.
    """

    __slots__ = ("_hash", "branch", "legacy", "method", "role", "sent_by")
    _FIELDS = ("role", "method", "branch", "sent_by", "legacy")

    def __init__(
        self,
        role: Role,
        method: str,
        branch: str,
        sent_by: str = "",
        legacy: tuple[str, ...] = (),
    ) -> None:
        self.role: Final = role
        self.method: Final = method
        self.branch: Final = branch
        self.sent_by: Final = sent_by
        self.legacy: Final = legacy
        self._hash: Final = hash((role, method, branch, sent_by, legacy))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TransactionKey):
            return NotImplemented
        return self._hash == other._hash and self._parts() == other._parts()

    def __hash__(self) -> int:
        return self._hash

    def __str__(self) -> str:
        where = f"@{self.sent_by}" if self.sent_by else ""
        return f"{self.role.value}:{self.method}:{self.branch}{where}"


class InviteClientState(KeyEnum):
    """RFC 3261 §17.1.1.2 (figure 5) with RFC 6026 §7.2 Accepted."""

    CALLING = "Calling"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class NonInviteClientState(KeyEnum):
    """RFC 3261 §17.1.2.2 (figure 6)."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


class InviteServerState(KeyEnum):
    """RFC 3261 §17.2.1 (figure 7) with RFC 6026 §7.1 Accepted."""

    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    ACCEPTED = "Accepted"
    TERMINATED = "Terminated"


class NonInviteServerState(KeyEnum):
    """RFC 3261 §17.2.2 (figure 8)."""

    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    COMPLETED = "Completed"
    TERMINATED = "Terminated"


TransactionState = (
    InviteClientState | NonInviteClientState | InviteServerState | NonInviteServerState
)


class Timer(KeyEnum):
    """RFC 3261 §17 timers (table 4) plus RFC 6026 timers L and M."""

    A = "A"  # INVITE request retransmit (unreliable only)
    B = "B"  # INVITE client timeout
    D = "D"  # wait for response retransmits
    E = "E"  # non-INVITE request retransmit (unreliable only)
    F = "F"  # non-INVITE client timeout
    G = "G"  # INVITE final response retransmit (unreliable only)
    H = "H"  # wait for ACK
    I = "I"  # wait for ACK retransmits  # noqa: E741
    J = "J"  # wait for non-INVITE request retransmits
    K = "K"  # wait for non-INVITE response retransmits
    L = "L"  # RFC 6026: server waits for 2xx retransmits from the TU / ACKs
    M = "M"  # RFC 6026: client waits for 2xx retransmits


@dataclass(frozen=True, slots=True)
class TimerConfig:
    """T1/T2/T4 (RFC 3261 §17.1.1.1, table 4) and the timer values derived from them."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    timer_d: float = 32.0  # table 4: "> 32s for UDP"

    def __post_init__(self) -> None:
        for name in ("t1", "t2", "t4", "timer_d"):
            if not getattr(self, name) > 0:
                raise ValueError(f"TimerConfig.{name} must be > 0")
        if self.t2 < self.t1:
            raise ValueError("TimerConfig.t2 must be >= t1")

    def duration(self, timer: Timer, reliable: bool) -> float | None:
        """Initial value of `timer`; None when it is not used on this transport (table 4)."""
        if timer in (Timer.A, Timer.E, Timer.G):
            return None if reliable else self.t1
        if timer is Timer.D:
            return 0.0 if reliable else self.timer_d
        if timer in (Timer.I, Timer.K):
            return 0.0 if reliable else self.t4
        if timer is Timer.J:
            return 0.0 if reliable else 64 * self.t1
        return 64 * self.t1  # B, F, H, L, M


# --- inputs (past tense) -------------------------------------------------------------


class MessageReceived(Value):
    """The transport received `message` from `source`."""

    __slots__ = ("message", "source")
    _FIELDS = ("message", "source")

    def __init__(self, message: Request | Response, source: Endpoint) -> None:
        self.message: Final = message
        self.source: Final = source


class RequestSent(Value):
    """The TU starts a client transaction (its z9hG4bK Via is already on top).

    An ACK starts no transaction (§17.1.1.3, §13.2.2.4): it is transmitted once.
    """

    __slots__ = ("destination", "request")
    _FIELDS = ("request", "destination")

    def __init__(self, request: Request, destination: Endpoint) -> None:
        self.request: Final = request
        self.destination: Final = destination


class ResponseSent(Value):
    """The TU answers the server transaction `key`."""

    __slots__ = ("key", "response")
    _FIELDS = ("response", "key")

    def __init__(self, response: Response, key: TransactionKey) -> None:
        self.response: Final = response
        self.key: Final = key


class TimerFired(Value):
    """The caller's single timer (armed at `next_deadline()`) went off."""

    __slots__ = ()


class TransportFailed(Value):
    """Sending a message of transaction `key` failed (§17.1.1.2, §17.2.1, §17.2.2)."""

    __slots__ = ("key",)
    _FIELDS = ("key",)

    def __init__(self, key: TransactionKey) -> None:
        self.key: Final = key


Input = MessageReceived | RequestSent | ResponseSent | TimerFired | TransportFailed


# --- actions (imperative) ------------------------------------------------------------


class Transmit(Value):
    """Send `message` to `destination`; `key` is the transaction it belongs to, if any."""

    __slots__ = ("destination", "key", "message")
    _FIELDS = ("message", "destination", "key")

    def __init__(
        self, message: Request | Response, destination: Endpoint, key: TransactionKey | None = None
    ) -> None:
        self.message: Final = message
        self.destination: Final = destination
        self.key: Final = key


class DeliverRequest(Value):
    """A new server transaction `key` was created for `request`: the TU must answer it."""

    __slots__ = ("key", "request", "source")
    _FIELDS = ("request", "source", "key")

    def __init__(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        self.request: Final = request
        self.source: Final = source
        self.key: Final = key


class DeliverCancel(Value):
    """A CANCEL opened server transaction `key`; `invite_key` is the INVITE server
    transaction it matches (§9.2), in any state, or None. The TU answers the CANCEL
    (200; 481 or a stateless forward when None) and the INVITE 487 if
    `layer.state(invite_key)` is still Proceeding."""

    __slots__ = ("cancel", "invite_key", "key", "source")
    _FIELDS = ("cancel", "source", "key", "invite_key")

    def __init__(
        self,
        cancel: Request,
        source: Endpoint,
        key: TransactionKey,
        invite_key: TransactionKey | None,
    ) -> None:
        self.cancel: Final = cancel
        self.source: Final = source
        self.key: Final = key
        self.invite_key: Final = invite_key


class DeliverAck(Value):
    """An ACK that belongs to no INVITE server transaction (ACK for a 2xx, §17.2.3):
    the TU handles or forwards it end to end."""

    __slots__ = ("request", "source")
    _FIELDS = ("request", "source")

    def __init__(self, request: Request, source: Endpoint) -> None:
        self.request: Final = request
        self.source: Final = source


class DeliverResponse(Value):
    """A response for the client transaction `key` that the TU must see."""

    __slots__ = ("key", "response")
    _FIELDS = ("response", "key")

    def __init__(self, response: Response, key: TransactionKey) -> None:
        self.response: Final = response
        self.key: Final = key


class StrayResponse(Value):
    """A response matching no client transaction (§17.1.3); a proxy forwards it
    statelessly (§16.7), a UA drops it."""

    __slots__ = ("response", "source")
    _FIELDS = ("response", "source")

    def __init__(self, response: Response, source: Endpoint) -> None:
        self.response: Final = response
        self.source: Final = source


class TransactionTimedOut(Value):
    """Timer B/F: the client TU acts as on a 408 (§8.1.3.1); timer H: the ACK never came."""

    __slots__ = ("key",)
    _FIELDS = ("key",)

    def __init__(self, key: TransactionKey) -> None:
        self.key: Final = key


class TransactionFailed(Value):
    """A transport error ended transaction `key`: the client TU acts as on a 503 (§8.1.3.1)."""

    __slots__ = ("key",)
    _FIELDS = ("key",)

    def __init__(self, key: TransactionKey) -> None:
        self.key: Final = key


class TransactionTerminated(Value):
    """Transaction `key` reached Terminated and was removed; forget the key."""

    __slots__ = ("key",)
    _FIELDS = ("key",)

    def __init__(self, key: TransactionKey) -> None:
        self.key: Final = key


Action = (
    Transmit
    | DeliverRequest
    | DeliverCancel
    | DeliverAck
    | DeliverResponse
    | StrayResponse
    | TransactionTimedOut
    | TransactionFailed
    | TransactionTerminated
)
