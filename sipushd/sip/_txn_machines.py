"""The four RFC 3261 §17 transaction state machines as transition tables, and their engine.

Each machine is a dict `(state, trigger) -> (next state or None, effects)`; a pair missing
from the dict is impossible and raises `TransactionError`. Every pair a *network* input can
produce is listed (often as an absorb, `()`), so only a TU mistake can raise. Timers are
armed on entering a state (`ENTRY`) and the ones listed in `KEEP` survive a transition;
a timer whose value is 0 (D, I, J, K on a reliable transport) fires at once.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Mapping
from typing import ClassVar

from sipushd.sip._txn_types import (
    Action,
    DeliverAck,
    DeliverResponse,
    InviteClientState,
    InviteServerState,
    KeyEnum,
    NonInviteClientState,
    NonInviteServerState,
    Timer,
    TimerConfig,
    TransactionError,
    TransactionFailed,
    TransactionKey,
    TransactionState,
    TransactionTerminated,
    TransactionTimedOut,
    Transmit,
)
from sipushd.sip.addr import Endpoint
from sipushd.sip.headers import Headers
from sipushd.sip.message import Request, Response, make_response


class Event(KeyEnum):
    """Non-timer triggers of the machines."""

    RECV_1XX = "receive 1xx"
    RECV_2XX = "receive 2xx"
    RECV_FINAL = "receive 300-699"
    RECV_REQUEST = "receive request retransmission"
    RECV_ACK = "receive ACK"
    TU_1XX = "TU sends 1xx"
    TU_2XX = "TU sends 2xx"
    TU_FINAL = "TU sends 300-699"
    TRANSPORT_ERROR = "transport error"


class Do(KeyEnum):
    """Effects a transition performs, in order, before it changes state."""

    DELIVER_RESPONSE = "pass the response to the TU"
    DELIVER_ACK = "pass the ACK to the TU"
    SEND_ACK = "send (or resend) the ACK for a non-2xx final response"
    SEND_RESPONSE = "send the TU's response and remember it"
    RESEND_RESPONSE = "resend the last response"
    RETRANSMIT = "retransmit and re-arm the retransmission timer"
    REPORT_TIMEOUT = "tell the TU the transaction timed out"
    REPORT_FAILURE = "tell the TU the transport failed"


Trigger = Event | Timer
Step = tuple[TransactionState | None, tuple[Do, ...]]
Table = Mapping[tuple[TransactionState, Trigger], Step]
ABSORB: tuple[Do, ...] = ()
_NONE_KEPT: frozenset[Timer] = frozenset()


def response_event(status: int, *, from_tu: bool) -> Event:
    """Classify a response status as the trigger it is for a machine."""
    if not 100 <= status <= 699:
        raise TransactionError(f"invalid status code {status}")
    if status < 200:
        return Event.TU_1XX if from_tu else Event.RECV_1XX
    if status < 300:
        return Event.TU_2XX if from_tu else Event.RECV_2XX
    return Event.TU_FINAL if from_tu else Event.RECV_FINAL


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response to `invite` (RFC 3261 §17.1.1.3)."""
    # §17.1.1.3: Request-URI, Call-ID, From and CSeq number from the original request,
    # To from the response, a single Via equal to the original top Via, its Route set.
    items = [
        ("Via", str(invite.top_via)),
        ("Max-Forwards", "70"),
        ("From", invite.headers.get("From") or str(invite.from_)),
        ("To", response.headers.get("To") or str(response.to)),
        ("Call-ID", invite.call_id),
        ("CSeq", f"{invite.cseq.seq} ACK"),
    ]
    items += [("Route", value) for value in invite.headers.get_all("Route")]
    return Request(method="ACK", uri=invite.uri, headers=Headers(items))


class Scheduler:
    """A heap of (deadline, token, key, timer); cancelled entries are skipped lazily."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, TransactionKey, Timer]] = []
        self._tokens = itertools.count()

    def __len__(self) -> int:
        return len(self._heap)

    def arm(self, key: TransactionKey, timer: Timer, deadline: float) -> int:
        """Schedule `timer` of `key`; the returned token identifies this arming."""
        token = next(self._tokens)
        heapq.heappush(self._heap, (deadline, token, key, timer))
        return token

    def first(self, live: Callable[[TransactionKey, Timer, int], bool]) -> float | None:
        """Earliest live deadline, dropping dead entries from the top."""
        while self._heap:
            deadline, token, key, timer = self._heap[0]
            if live(key, timer, token):
                return deadline
            heapq.heappop(self._heap)
        return None

    def pop_due(
        self, now: float, live: Callable[[TransactionKey, Timer, int], bool]
    ) -> tuple[TransactionKey, Timer] | None:
        """Remove and return the earliest live timer due at `now`, if any."""
        while self._heap and self._heap[0][0] <= now:
            _, token, key, timer = heapq.heappop(self._heap)
            if live(key, timer, token):
                return key, timer
        return None

    def compact(self, live: Callable[[TransactionKey, Timer, int], bool]) -> None:
        """Drop every dead entry (bounds memory when many timers are cancelled early)."""
        self._heap = [e for e in self._heap if live(e[2], e[3], e[1])]
        heapq.heapify(self._heap)


class Transaction:
    """Engine shared by the four machines: runs the table, keeps timers and messages.

    `request` is None for a non-INVITE server transaction: nothing in its machine needs
    the request once the TU has it, and a UDP one lives on for Timer J (64*T1, §17.2.2).
    """

    __slots__ = (
        "_scheduler",
        "ack",
        "config",
        "interval",
        "key",
        "last_response",
        "peer",
        "request",
        "state",
        "timers",
    )

    KEEPS_REQUEST: ClassVar[bool] = True
    TABLE: ClassVar[Table]
    ENTRY: ClassVar[Mapping[TransactionState, tuple[Timer, ...]]]
    KEEP: ClassVar[Mapping[TransactionState, frozenset[Timer]]]
    RETRANSMIT_TIMER: ClassVar[Timer | None] = None
    INITIAL: ClassVar[TransactionState]
    TERMINATED: ClassVar[TransactionState]

    def __init__(
        self,
        key: TransactionKey,
        request: Request,
        peer: Endpoint,
        config: TimerConfig,
        scheduler: Scheduler,
    ) -> None:
        self.key = key
        self.request: Request | None = request if self.KEEPS_REQUEST else None
        self.peer = peer
        self.config = config
        self.state: TransactionState = self.INITIAL
        self.timers: dict[Timer, tuple[float, int]] = {}
        self.interval = config.t1
        self.last_response: Response | None = None
        self.ack: Request | None = None
        self._scheduler = scheduler

    def _request(self) -> Request:
        assert self.request is not None, "only non-INVITE server transactions drop it"
        return self.request

    @property
    def terminated(self) -> bool:
        """True once the machine reached Terminated."""
        return self.state is self.TERMINATED

    def start(self, now: float) -> list[Action]:
        """Actions for creating the transaction (initial send, initial timers)."""
        return self._enter(self.INITIAL, now)

    def handle(
        self,
        trigger: Trigger,
        now: float,
        message: Request | Response | None = None,
        source: Endpoint | None = None,
    ) -> list[Action]:
        """Run one transition; raise TransactionError when the table has no entry."""
        if isinstance(trigger, Timer):
            self.timers.pop(trigger, None)
        try:
            next_state, effects = self.TABLE[(self.state, trigger)]
        except KeyError:
            raise TransactionError(
                f"{type(self).__name__} {self.key}: {trigger.value!r} "
                f"is not allowed in state {self.state.value}"
            ) from None
        actions: list[Action] = []
        for effect in effects:
            actions += self._do(effect, now, message, source)
        if next_state is not None and next_state is not self.state:
            actions += self._enter(next_state, now)
        return actions

    def _enter(self, state: TransactionState, now: float) -> list[Action]:
        self.state = state
        if self.timers:
            keep = self.KEEP.get(state, _NONE_KEPT)
            self.timers = {t: v for t, v in self.timers.items() if t in keep}
        if state is self.TERMINATED:
            return [TransactionTerminated(self.key)]
        for timer in self.ENTRY.get(state, ()):
            delay = self.config.duration(timer, self.peer.reliable)
            if delay is None:
                continue
            if delay == 0:
                # Table 4: D, I, J, K are 0 on a reliable transport; fire now.
                return self.handle(timer, now)
            if timer is self.RETRANSMIT_TIMER:
                self.interval = delay
            self._arm(timer, now + delay)
        return []

    def _arm(self, timer: Timer, deadline: float) -> None:
        self.timers[timer] = (deadline, self._scheduler.arm(self.key, timer, deadline))

    def _next_interval(self) -> float:
        """Interval to re-arm the retransmission timer with (per machine)."""
        return min(2 * self.interval, self.config.t2)

    def _do(
        self, effect: Do, now: float, message: Request | Response | None, source: Endpoint | None
    ) -> list[Action]:
        match effect:
            case Do.DELIVER_RESPONSE:
                return [DeliverResponse(_response(message), self.key)]
            case Do.DELIVER_ACK:
                return [DeliverAck(_as_request(message), source or self.peer)]
            case Do.SEND_ACK:
                if self.ack is None:
                    self.ack = build_ack(self._request(), _response(message))
                return [Transmit(self.ack, self.peer, self.key)]
            case Do.SEND_RESPONSE:
                self.last_response = _response(message)
                return [Transmit(self.last_response, self.peer, self.key)]
            case Do.RESEND_RESPONSE:
                if self.last_response is None:
                    return []
                return [Transmit(self.last_response, self.peer, self.key)]
            case Do.RETRANSMIT:
                assert self.RETRANSMIT_TIMER is not None
                self.interval = self._next_interval()
                self._arm(self.RETRANSMIT_TIMER, now + self.interval)
                return [Transmit(self._retransmitted(), self.peer, self.key)]
            case Do.REPORT_TIMEOUT:
                return [TransactionTimedOut(self.key)]
            case Do.REPORT_FAILURE:
                return [TransactionFailed(self.key)]
        raise AssertionError(effect)  # pragma: no cover

    def _retransmitted(self) -> Request | Response:
        return self._request()


def _response(message: Request | Response | None) -> Response:
    if not isinstance(message, Response):
        raise TransactionError(f"expected a response, got {message!r}")
    return message


def _as_request(message: Request | Response | None) -> Request:
    if not isinstance(message, Request):
        raise TransactionError(f"expected a request, got {message!r}")
    return message


def _fail_on_transport_error(table: Table, terminated: TransactionState) -> Table:
    """Add `(state, TRANSPORT_ERROR) -> Terminated` for every live state (§17.1.1.2 ...)."""
    full = dict(table)
    for state in {state for state, _ in table} - {terminated}:
        full[(state, Event.TRANSPORT_ERROR)] = (terminated, (Do.REPORT_FAILURE,))
    return full


ICS = InviteClientState
NCS = NonInviteClientState
ISS = InviteServerState
NSS = NonInviteServerState
E = Event


class InviteClientTransaction(Transaction):
    """RFC 3261 §17.1.1 with RFC 6026 §7.2: a 2xx moves to Accepted (timer M)."""

    __slots__ = ()

    INITIAL = ICS.CALLING
    TERMINATED = ICS.TERMINATED
    RETRANSMIT_TIMER = Timer.A
    ENTRY = {ICS.CALLING: (Timer.A, Timer.B), ICS.COMPLETED: (Timer.D,), ICS.ACCEPTED: (Timer.M,)}
    KEEP = {ICS.CALLING: frozenset({Timer.A, Timer.B})}
    TABLE = _fail_on_transport_error(
        {
            (ICS.CALLING, E.RECV_1XX): (ICS.PROCEEDING, (Do.DELIVER_RESPONSE,)),
            (ICS.CALLING, E.RECV_2XX): (ICS.ACCEPTED, (Do.DELIVER_RESPONSE,)),
            (ICS.CALLING, E.RECV_FINAL): (ICS.COMPLETED, (Do.SEND_ACK, Do.DELIVER_RESPONSE)),
            (ICS.CALLING, Timer.A): (None, (Do.RETRANSMIT,)),
            (ICS.CALLING, Timer.B): (ICS.TERMINATED, (Do.REPORT_TIMEOUT,)),
            (ICS.PROCEEDING, E.RECV_1XX): (None, (Do.DELIVER_RESPONSE,)),
            (ICS.PROCEEDING, E.RECV_2XX): (ICS.ACCEPTED, (Do.DELIVER_RESPONSE,)),
            (ICS.PROCEEDING, E.RECV_FINAL): (ICS.COMPLETED, (Do.SEND_ACK, Do.DELIVER_RESPONSE)),
            # §17.1.1.2: retransmitted finals are answered with the same ACK, not delivered.
            (ICS.COMPLETED, E.RECV_1XX): (None, ABSORB),
            (ICS.COMPLETED, E.RECV_2XX): (None, ABSORB),
            (ICS.COMPLETED, E.RECV_FINAL): (None, (Do.SEND_ACK,)),
            (ICS.COMPLETED, Timer.D): (ICS.TERMINATED, ABSORB),
            # RFC 6026 §8.4: every 2xx is passed up (the TU ACKs / a proxy forwards it).
            (ICS.ACCEPTED, E.RECV_1XX): (None, ABSORB),
            (ICS.ACCEPTED, E.RECV_2XX): (None, (Do.DELIVER_RESPONSE,)),
            (ICS.ACCEPTED, E.RECV_FINAL): (None, ABSORB),
            (ICS.ACCEPTED, Timer.M): (ICS.TERMINATED, ABSORB),
        },
        ICS.TERMINATED,
    )

    def _next_interval(self) -> float:
        # §17.1.1.2: INVITE retransmission intervals double without the T2 cap.
        return 2 * self.interval

    def start(self, now: float) -> list[Action]:
        """Send the INVITE, arm A (unreliable only) and B."""
        return [Transmit(self._request(), self.peer, self.key), *self._enter(self.INITIAL, now)]


class NonInviteClientTransaction(Transaction):
    """RFC 3261 §17.1.2."""

    __slots__ = ()

    INITIAL = NCS.TRYING
    TERMINATED = NCS.TERMINATED
    RETRANSMIT_TIMER = Timer.E
    ENTRY = {NCS.TRYING: (Timer.E, Timer.F), NCS.COMPLETED: (Timer.K,)}
    KEEP = {
        NCS.TRYING: frozenset({Timer.E, Timer.F}),
        NCS.PROCEEDING: frozenset({Timer.E, Timer.F}),
    }
    TABLE = _fail_on_transport_error(
        {
            (NCS.TRYING, E.RECV_1XX): (NCS.PROCEEDING, (Do.DELIVER_RESPONSE,)),
            (NCS.TRYING, E.RECV_2XX): (NCS.COMPLETED, (Do.DELIVER_RESPONSE,)),
            (NCS.TRYING, E.RECV_FINAL): (NCS.COMPLETED, (Do.DELIVER_RESPONSE,)),
            (NCS.TRYING, Timer.E): (None, (Do.RETRANSMIT,)),
            (NCS.TRYING, Timer.F): (NCS.TERMINATED, (Do.REPORT_TIMEOUT,)),
            (NCS.PROCEEDING, E.RECV_1XX): (None, (Do.DELIVER_RESPONSE,)),
            (NCS.PROCEEDING, E.RECV_2XX): (NCS.COMPLETED, (Do.DELIVER_RESPONSE,)),
            (NCS.PROCEEDING, E.RECV_FINAL): (NCS.COMPLETED, (Do.DELIVER_RESPONSE,)),
            (NCS.PROCEEDING, Timer.E): (None, (Do.RETRANSMIT,)),
            (NCS.PROCEEDING, Timer.F): (NCS.TERMINATED, (Do.REPORT_TIMEOUT,)),
            # §17.1.2.2: response retransmissions are absorbed until timer K.
            (NCS.COMPLETED, E.RECV_1XX): (None, ABSORB),
            (NCS.COMPLETED, E.RECV_2XX): (None, ABSORB),
            (NCS.COMPLETED, E.RECV_FINAL): (None, ABSORB),
            (NCS.COMPLETED, Timer.K): (NCS.TERMINATED, ABSORB),
        },
        NCS.TERMINATED,
    )

    def _next_interval(self) -> float:
        # §17.1.2.2: MIN(2*E, T2) in Trying, T2 once a provisional arrived.
        if self.state is NCS.PROCEEDING:
            return self.config.t2
        return min(2 * self.interval, self.config.t2)

    def start(self, now: float) -> list[Action]:
        """Send the request, arm E (unreliable only) and F."""
        return [Transmit(self._request(), self.peer, self.key), *self._enter(self.INITIAL, now)]


class InviteServerTransaction(Transaction):
    """RFC 3261 §17.2.1 with RFC 6026 §7.1: a 2xx moves to Accepted (timer L)."""

    __slots__ = ()

    INITIAL = ISS.PROCEEDING
    TERMINATED = ISS.TERMINATED
    RETRANSMIT_TIMER = Timer.G
    ENTRY = {ISS.COMPLETED: (Timer.G, Timer.H), ISS.CONFIRMED: (Timer.I,), ISS.ACCEPTED: (Timer.L,)}
    KEEP: ClassVar[Mapping[TransactionState, frozenset[Timer]]] = {}
    TABLE = _fail_on_transport_error(
        {
            # §17.2.1: a retransmitted INVITE gets the latest provisional response again.
            (ISS.PROCEEDING, E.RECV_REQUEST): (None, (Do.RESEND_RESPONSE,)),
            (ISS.PROCEEDING, E.RECV_ACK): (None, ABSORB),
            (ISS.PROCEEDING, E.TU_1XX): (None, (Do.SEND_RESPONSE,)),
            (ISS.PROCEEDING, E.TU_2XX): (ISS.ACCEPTED, (Do.SEND_RESPONSE,)),
            (ISS.PROCEEDING, E.TU_FINAL): (ISS.COMPLETED, (Do.SEND_RESPONSE,)),
            (ISS.COMPLETED, E.RECV_REQUEST): (None, (Do.RESEND_RESPONSE,)),
            (ISS.COMPLETED, E.RECV_ACK): (ISS.CONFIRMED, ABSORB),
            (ISS.COMPLETED, Timer.G): (None, (Do.RETRANSMIT,)),
            (ISS.COMPLETED, Timer.H): (ISS.TERMINATED, (Do.REPORT_TIMEOUT,)),
            # §17.2.1: Confirmed only soaks up ACK retransmissions until timer I.
            (ISS.CONFIRMED, E.RECV_REQUEST): (None, ABSORB),
            (ISS.CONFIRMED, E.RECV_ACK): (None, ABSORB),
            (ISS.CONFIRMED, Timer.I): (ISS.TERMINATED, ABSORB),
            # RFC 6026 §7.1: INVITE retransmissions absorbed, 2xx retransmissions from the
            # TU sent, an ACK that matches (RFC 2543 peers) passed to the TU.
            (ISS.ACCEPTED, E.RECV_REQUEST): (None, ABSORB),
            (ISS.ACCEPTED, E.RECV_ACK): (None, (Do.DELIVER_ACK,)),
            (ISS.ACCEPTED, E.TU_2XX): (None, (Do.SEND_RESPONSE,)),
            (ISS.ACCEPTED, Timer.L): (ISS.TERMINATED, ABSORB),
        },
        ISS.TERMINATED,
    )

    def start(self, now: float) -> list[Action]:
        """Send 100 Trying at once (§17.2.1: the TU may take longer than 200 ms)."""
        # §8.2.6.1: a 100 copies Timestamp and carries no To tag.
        request = self._request()
        stamp = request.headers.get("Timestamp")
        extra = [("Timestamp", stamp)] if stamp is not None else []
        self.last_response = make_response(request, 100, headers=extra)
        return [Transmit(self.last_response, self.peer, self.key)]

    def _retransmitted(self) -> Request | Response:
        assert self.last_response is not None  # G runs only in Completed
        return self.last_response


class NonInviteServerTransaction(Transaction):
    """RFC 3261 §17.2.2."""

    __slots__ = ()

    INITIAL = NSS.TRYING
    TERMINATED = NSS.TERMINATED
    KEEPS_REQUEST = False
    ENTRY = {NSS.COMPLETED: (Timer.J,)}
    KEEP: ClassVar[Mapping[TransactionState, frozenset[Timer]]] = {}
    TABLE = _fail_on_transport_error(
        {
            # §17.2.2: retransmissions are absorbed in Trying, answered afterwards.
            (NSS.TRYING, E.RECV_REQUEST): (None, ABSORB),
            (NSS.TRYING, E.TU_1XX): (NSS.PROCEEDING, (Do.SEND_RESPONSE,)),
            (NSS.TRYING, E.TU_2XX): (NSS.COMPLETED, (Do.SEND_RESPONSE,)),
            (NSS.TRYING, E.TU_FINAL): (NSS.COMPLETED, (Do.SEND_RESPONSE,)),
            (NSS.PROCEEDING, E.RECV_REQUEST): (None, (Do.RESEND_RESPONSE,)),
            (NSS.PROCEEDING, E.TU_1XX): (None, (Do.SEND_RESPONSE,)),
            (NSS.PROCEEDING, E.TU_2XX): (NSS.COMPLETED, (Do.SEND_RESPONSE,)),
            (NSS.PROCEEDING, E.TU_FINAL): (NSS.COMPLETED, (Do.SEND_RESPONSE,)),
            (NSS.COMPLETED, E.RECV_REQUEST): (None, (Do.RESEND_RESPONSE,)),
            # §17.2.2: further responses from the TU are discarded in Completed.
            (NSS.COMPLETED, E.TU_1XX): (None, ABSORB),
            (NSS.COMPLETED, E.TU_2XX): (None, ABSORB),
            (NSS.COMPLETED, E.TU_FINAL): (None, ABSORB),
            (NSS.COMPLETED, Timer.J): (NSS.TERMINATED, ABSORB),
        },
        NSS.TERMINATED,
    )
