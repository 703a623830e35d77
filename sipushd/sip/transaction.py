"""RFC 3261 §17 transaction layer: matches messages to transactions and runs their timers.

Sans-IO and clock-free: the caller feeds inputs with the current time and executes the
returned actions, then re-arms its single timer at `next_deadline()`.

    layer = TransactionLayer(TimerConfig())
    actions = layer.handle(MessageReceived(message, source), now)
    deadline = layer.next_deadline()          # call handle(TimerFired(), deadline) then

Inputs (past tense)
  MessageReceived(message, source)   the transport received a request or response
  RequestSent(request, destination)  the TU starts a client transaction; its top Via
                                     carries a z9hG4bK branch. An ACK starts none and
                                     is just transmitted once (§17.1.1.3, §13.2.2.4)
  ResponseSent(response, key)        the TU answers server transaction `key`
  TimerFired()                       fire every timer due at `now`
  TransportFailed(key)               sending for `key` failed: it terminates (§17.1.1.2)

Actions (imperative)
  Transmit(message, destination, key)      send it; `key` None for a stateless ACK
  DeliverRequest(request, source, key)     new server transaction: the TU answers it
  DeliverCancel(cancel, source, key, invite_key)
                                           a CANCEL, own non-INVITE server transaction
                                           `key`, matched to INVITE server transaction
                                           `invite_key` (None: no match) per §9.2. The
                                           layer does not answer it: the TU sends 200
                                           (then 487 on the INVITE if still Proceeding),
                                           or 481 for a UA / forwards it statelessly for
                                           a proxy (§16.10) when invite_key is None
  DeliverAck(request, source)              an ACK no INVITE server transaction absorbs
                                           (ACK for 2xx): end to end, for the TU
  DeliverResponse(response, key)           a response of client transaction `key`
  StrayResponse(response, source)          matches no client transaction (§17.1.3)
  TransactionTimedOut(key)                 timer B/F (TU acts as on 408) or H (no ACK)
  TransactionFailed(key)                   transport error (TU acts as on 503)
  TransactionTerminated(key)               `key` is gone; always the last action for it

Rules
  - Client keys are (branch, method) (§17.1.3); `client_key(request)` computes one
    without a round trip. Server keys are (branch, sent-by, method) for z9hG4bK
    branches and the RFC 2543 fields otherwise (§17.2.3); ACK matches its INVITE.
  - INVITE transactions follow RFC 6026: a 2xx moves both sides to Accepted (timers L
    and M = 64*T1); the client passes every 2xx up, the server sends every 2xx the
    TU hands it. The INVITE client transaction ACKs non-2xx finals itself.
  - The INVITE server transaction sends 100 Trying as soon as it is created.
  - Responses go back per §18.2.2 and RFC 3581 (`response_destination`): on TCP/TLS
    over the request's flow (else a new connection to source host, sent-by port); on
    UDP to the source address, at the source port when the top Via has rport, else at
    the sent-by port; maddr honoured. This agrees with sipushd.transport's routing.
  - Retransmission timers A, E, G run on unreliable transports only; D, I, J, K are 0
    on reliable ones, so those transactions end as soon as they complete.
  - MessageReceived raises SipParseError, with no state changed, when a header the
    match needs is malformed (top Via, CSeq; To/From/Call-ID for RFC 2543 peers):
    treat it as a parse error (§8.2.2 / STYLE rule 3). Otherwise network input never
    raises. A TU input the state machine forbids (answering an
    unknown or finished transaction, a second final response to an INVITE, a branch
    without the magic cookie, a reused branch) raises TransactionError.
"""

from __future__ import annotations

from sipushd.sip._txn_machines import (
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Scheduler,
    Transaction,
    Trigger,
    build_ack,
    response_event,
)
from sipushd.sip._txn_types import (
    MAGIC_COOKIE,
    Action,
    DeliverAck,
    DeliverCancel,
    DeliverRequest,
    DeliverResponse,
    Input,
    InviteClientState,
    InviteServerState,
    MessageReceived,
    NonInviteClientState,
    NonInviteServerState,
    RequestSent,
    ResponseSent,
    Role,
    StrayResponse,
    Timer,
    TimerConfig,
    TimerFired,
    TransactionError,
    TransactionFailed,
    TransactionKey,
    TransactionState,
    TransactionTerminated,
    TransactionTimedOut,
    Transmit,
    TransportFailed,
)
from sipushd.sip.addr import Endpoint
from sipushd.sip.errors import SipParseError
from sipushd.sip.message import Request, Response

__all__ = [
    "MAGIC_COOKIE",
    "Action",
    "DeliverAck",
    "DeliverCancel",
    "DeliverRequest",
    "DeliverResponse",
    "Input",
    "InviteClientState",
    "InviteServerState",
    "MessageReceived",
    "NonInviteClientState",
    "NonInviteServerState",
    "RequestSent",
    "ResponseSent",
    "Role",
    "StrayResponse",
    "Timer",
    "TimerConfig",
    "TimerFired",
    "TransactionError",
    "TransactionFailed",
    "TransactionKey",
    "TransactionLayer",
    "TransactionState",
    "TransactionTerminated",
    "TransactionTimedOut",
    "Transmit",
    "TransportFailed",
    "build_ack",
    "client_key",
    "response_destination",
    "server_key",
]

# Index of the To tag inside TransactionKey.legacy (see _legacy_fields).
_LEGACY_TO_TAG = 1
# RFC 3261 §19.1.2: default ports per transport.
_DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}


def client_key(message: Request | Response) -> TransactionKey:
    """Client transaction key of a request we send or a response to it (§17.1.3)."""
    branch = message.top_via.branch or ""
    method = message.method if isinstance(message, Request) else message.cseq.method
    return TransactionKey(Role.CLIENT, method, branch)


def server_key(request: Request) -> TransactionKey:
    """Server transaction key of a received request; an ACK gets its INVITE's (§17.2.3)."""
    via = request.top_via
    branch = via.branch or ""
    method = "INVITE" if request.method == "ACK" else request.method
    if branch.startswith(MAGIC_COOKIE):
        sent_by = via.host.lower() if via.port is None else f"{via.host.lower()}:{via.port}"
        return TransactionKey(Role.SERVER, method, branch, sent_by=sent_by)
    return TransactionKey(Role.SERVER, method, branch, legacy=_legacy_fields(request))


def _legacy_fields(request: Request) -> tuple[str, ...]:
    # §17.2.3 (RFC 2543 fallback): Request-URI, To tag, From tag, Call-ID, CSeq number
    # and top Via identify the transaction.
    return (
        str(request.uri),
        request.to.tag or "",
        request.from_.tag or "",
        request.call_id,
        str(request.cseq.seq),
        str(request.top_via),
    )


def response_destination(request: Request, source: Endpoint) -> Endpoint:
    """Where the responses of a server transaction go (§18.2.2, RFC 3581 §4).

    `source` is where the request came from; it stands for the `received` parameter
    whether or not the transport stamped the Via. TCP/TLS: the request's flow, or a new
    connection to the sent-by port. UDP: maddr at the sent-by port, else the source
    address at the source port with rport, else at the sent-by port.
    """
    via = request.top_via
    sent_by_port = via.port or _DEFAULT_PORTS.get(source.transport, 5060)
    if source.reliable:
        return Endpoint(source.transport, source.host, sent_by_port, source.flow)
    maddr = via.param("maddr")
    if maddr:
        return Endpoint(source.transport, maddr.strip("[]"), sent_by_port)
    if via.rport is not None:
        return Endpoint(source.transport, source.host, source.port)
    return Endpoint(source.transport, source.host, sent_by_port)


class TransactionLayer:
    """All live client and server transactions of one SIP element, keyed by TransactionKey."""

    def __init__(self, config: TimerConfig | None = None) -> None:
        self.config = config or TimerConfig()
        self._transactions: dict[TransactionKey, Transaction] = {}
        self._scheduler = Scheduler()

    def __len__(self) -> int:
        return len(self._transactions)

    def __contains__(self, key: object) -> bool:
        return key in self._transactions

    def state(self, key: TransactionKey) -> TransactionState | None:
        """Current state of transaction `key`, None once it is gone."""
        txn = self._transactions.get(key)
        return None if txn is None else txn.state

    def next_deadline(self) -> float | None:
        """Earliest timer across all transactions, None when nothing is armed."""
        return self._scheduler.first(self._live)

    def handle(self, event: Input, now: float) -> list[Action]:
        """Process one input at time `now` and return what the caller must do."""
        match event:
            case MessageReceived(message=Request() as request, source=source):
                actions = self._on_request(request, source, now)
            case MessageReceived(message=Response() as response, source=source):
                actions = self._on_response(response, source, now)
            case RequestSent(request=request, destination=destination):
                actions = self._on_request_sent(request, destination, now)
            case ResponseSent(response=response, key=key):
                actions = self._on_response_sent(response, key, now)
            case TimerFired():
                actions = self._on_timer(now)
            case TransportFailed(key=key):
                txn = self._transactions.get(key)
                actions = [] if txn is None else self._run(txn, Event.TRANSPORT_ERROR, now)
            case _:
                raise TypeError(f"not a transaction layer input: {event!r}")
        if len(self._scheduler) > 64 + 4 * len(self._transactions):
            self._scheduler.compact(self._live)
        return actions

    # --- server side -----------------------------------------------------------------

    def _on_request(self, request: Request, source: Endpoint, now: float) -> list[Action]:
        if request.method == "ACK":
            return self._on_ack(request, source, now)
        key = server_key(request)
        txn = self._transactions.get(key)
        if txn is not None:
            return self._run(txn, Event.RECV_REQUEST, now, request, source)
        kind = InviteServerTransaction if request.method == "INVITE" else NonInviteServerTransaction
        txn = kind(
            key, request, response_destination(request, source), self.config, self._scheduler
        )
        self._transactions[key] = txn
        actions = txn.start(now)
        if request.method == "CANCEL":
            # §9.2: the CANCEL targets the transaction it would match as any other method.
            invite_key = key.replace(method="INVITE")
            found = invite_key if invite_key in self._transactions else None
            actions.append(DeliverCancel(request, source, key, found))
        else:
            actions.append(DeliverRequest(request, source, key))
        return actions

    def _on_ack(self, ack: Request, source: Endpoint, now: float) -> list[Action]:
        txn = self._invite_for_ack(ack)
        if txn is None:
            # §17.2.3: an ACK for a 2xx has its own branch and matches nothing.
            return [DeliverAck(ack, source)]
        return self._run(txn, Event.RECV_ACK, now, ack, source)

    def _invite_for_ack(self, ack: Request) -> Transaction | None:
        key = server_key(ack)
        if not key.legacy:
            return self._transactions.get(key)
        # §17.2.3 (RFC 2543): the ACK's To tag is the one of our response, so the INVITE
        # carried it already (re-INVITE) or carried none (initial INVITE).
        to_tag = key.legacy[_LEGACY_TO_TAG]
        untagged = list(key.legacy)
        untagged[_LEGACY_TO_TAG] = ""
        for candidate in (key, key.replace(legacy=tuple(untagged))):
            txn = self._transactions.get(candidate)
            last = None if txn is None else txn.last_response
            if last is not None and (last.to.tag or "") == to_tag:
                return txn
        return None

    def _on_response_sent(
        self, response: Response, key: TransactionKey, now: float
    ) -> list[Action]:
        txn = self._transactions.get(key)
        if txn is None or key.role is not Role.SERVER:
            raise TransactionError(f"no live server transaction {key}")
        return self._run(txn, response_event(response.status, from_tu=True), now, response)

    # --- client side -----------------------------------------------------------------

    def _on_request_sent(self, request: Request, destination: Endpoint, now: float) -> list[Action]:
        if request.method == "ACK":
            return [Transmit(request, destination)]
        try:
            key = client_key(request)
            # Fail now rather than when the ACK or a response needs these (§8.1.1).
            _ = (request.call_id, request.cseq, request.from_, request.to)
        except SipParseError as exc:
            raise TransactionError(f"malformed request from the TU: {exc}") from exc
        if not key.branch.startswith(MAGIC_COOKIE):
            raise TransactionError(f"top Via branch {key.branch!r} lacks {MAGIC_COOKIE}")
        if key in self._transactions:
            raise TransactionError(f"client transaction {key} already exists")
        kind = InviteClientTransaction if request.method == "INVITE" else NonInviteClientTransaction
        txn = kind(key, request, destination, self.config, self._scheduler)
        self._transactions[key] = txn
        return txn.start(now)

    def _on_response(self, response: Response, source: Endpoint, now: float) -> list[Action]:
        key = client_key(response)
        txn = self._transactions.get(key)
        if txn is None or not 100 <= response.status <= 699:
            return [StrayResponse(response, source)]
        return self._run(txn, response_event(response.status, from_tu=False), now, response)

    # --- common ----------------------------------------------------------------------

    def _on_timer(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while (due := self._scheduler.pop_due(now, self._live)) is not None:
            key, timer = due
            actions += self._run(self._transactions[key], timer, now)
        return actions

    def _run(
        self,
        txn: Transaction,
        trigger: Trigger,
        now: float,
        message: Request | Response | None = None,
        source: Endpoint | None = None,
    ) -> list[Action]:
        actions = txn.handle(trigger, now, message, source)
        if txn.terminated:
            del self._transactions[txn.key]
        return actions

    def _live(self, key: TransactionKey, timer: Timer, token: int) -> bool:
        txn = self._transactions.get(key)
        return txn is not None and timer in txn.timers and txn.timers[timer][1] == token
