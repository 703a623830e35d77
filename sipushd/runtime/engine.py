"""The engine: joins the transport, the transaction layer and the transaction users.

It feeds every message the transport hands it into the RFC 3261 §17 transaction layer,
executes the actions that come back, and keeps the one timer the layer needs, re-armed
after every step (the aioquic pattern). Transaction users (the server core, later the
proxy) see requests, CANCELs, ACKs for 2xx and stray responses through `TransactionUser`,
and the responses of the client transactions they start through a `ClientListener`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

import structlog

from sipushd import metrics
from sipushd.sip import Endpoint, Request, Response
from sipushd.sip.errors import SipParseError
from sipushd.sip.transaction import (
    Action,
    DeliverAck,
    DeliverCancel,
    DeliverRequest,
    DeliverResponse,
    Input,
    MessageReceived,
    RequestSent,
    ResponseSent,
    Role,
    StrayResponse,
    TimerFired,
    TransactionError,
    TransactionFailed,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    Transmit,
    TransportFailed,
    client_key,
)
from sipushd.transport import TransportError

log = structlog.get_logger("sipushd.engine")


def _kind(key: TransactionKey) -> str:
    invite = "invite" if key.method == "INVITE" else "non_invite"
    return f"{invite}_{'server' if key.role is Role.SERVER else 'client'}"


# Plain dicts behind the metrics (every kind is in them from the start): one update each.
_CREATED = metrics.TRANSACTIONS.counts
_ACTIVE = metrics.ACTIVE_TRANSACTIONS.counts


def _created(key: TransactionKey) -> None:
    kind = _kind(key)
    _CREATED[kind] += 1
    _ACTIVE[kind] += 1


class Sender(Protocol):
    """What the engine needs of the transport: a non-blocking send."""

    def send(self, message: Request | Response, destination: Endpoint) -> Endpoint:
        """Send `message` to `destination`; raises on an impossible destination."""
        ...


class TransactionUser(Protocol):
    """The element above the transaction layer (RFC 3261 §17: the TU)."""

    def on_request(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        """A new server transaction: answer it through `Engine.respond`."""

    def on_cancel(
        self,
        cancel: Request,
        source: Endpoint,
        key: TransactionKey,
        invite_key: TransactionKey | None,
    ) -> None:
        """A CANCEL (its own transaction `key`) for INVITE transaction `invite_key`."""

    def on_ack(self, ack: Request, source: Endpoint) -> None:
        """An ACK for a 2xx: it belongs to no transaction (§17.2.3)."""

    def on_stray_response(self, response: Response, source: Endpoint) -> None:
        """A response that matches no client transaction (§17.1.3)."""


class ClientListener(Protocol):
    """Receives the outcome of one client transaction started with `Engine.send_request`."""

    def on_response(self, key: TransactionKey, response: Response) -> None:
        """A provisional or final response of the transaction."""

    def on_timeout(self, key: TransactionKey) -> None:
        """Timer B / F: act as on a 408 (§8.1.3.1)."""

    def on_transport_error(self, key: TransactionKey) -> None:
        """The request could not be sent: act as on a 503 (§8.1.3.1)."""


class Engine:
    """Runs the transaction layer on the event loop with a single timer."""

    def __init__(self, layer: TransactionLayer, clock: Callable[[], float] | None = None) -> None:
        self.layer = layer
        self._loop = asyncio.get_running_loop()
        self._clock = clock or self._loop.time
        self._sender: Sender | None = None
        self._user: TransactionUser | None = None
        self._listeners: dict[TransactionKey, ClientListener] = {}
        self._timer: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self.closed = False

    def attach(self, sender: Sender, user: TransactionUser) -> None:
        """Connect the transport that sends and the TU that answers."""
        self._sender = sender
        self._user = user

    # --- inputs ----------------------------------------------------------------------

    def on_message(self, message: Request | Response, source: Endpoint) -> None:
        """Transport callback: a parsed message arrived from `source`."""
        if self.closed and isinstance(message, Request) and message.method not in ("ACK",):
            return
        try:
            self._step(MessageReceived(message, source))
        except SipParseError as exc:
            # A header the transaction match needs is malformed (§8.2.2): drop it.
            log.info("malformed message dropped", peer=_peer(source), error=str(exc))

    def respond(self, key: TransactionKey, response: Response) -> bool:
        """Answer server transaction `key`; False when it is already gone or finished."""
        try:
            self._step(ResponseSent(response, key))
        except TransactionError as exc:
            log.debug("response not sent", key=str(key), status=response.status, error=str(exc))
            return False
        return True

    def send_request(
        self, request: Request, destination: Endpoint, listener: ClientListener | None
    ) -> TransactionKey:
        """Start a client transaction (or send an ACK) and report to `listener`."""
        key = client_key(request)
        if listener is not None and request.method != "ACK":
            self._listeners[key] = listener
        try:
            self._step(RequestSent(request, destination))
        except TransactionError:
            self._listeners.pop(key, None)
            raise
        if request.method != "ACK":
            _created(key)
        return key

    # --- the loop --------------------------------------------------------------------

    def _step(self, event: Input) -> None:
        actions = self.layer.handle(event, self._clock())
        if actions:
            self._execute(actions)
        self._rearm()

    def _on_timer(self) -> None:
        self._timer = None
        self._armed_at = None
        self._step(TimerFired())

    def _rearm(self) -> None:
        deadline = self.layer.next_deadline()
        if deadline == self._armed_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._armed_at = deadline
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _execute(self, actions: list[Action]) -> None:
        user = self._user
        assert user is not None, "Engine.attach() was not called"
        failed: list[TransactionKey] = []
        for action in actions:
            match action:
                case Transmit(message=message, destination=destination, key=key):
                    if not self._transmit(message, destination) and key is not None:
                        failed.append(key)
                case DeliverRequest(request=request, source=source, key=key):
                    _created(key)
                    user.on_request(request, source, key)
                case DeliverCancel(cancel=cancel, source=source, key=key, invite_key=invite):
                    _created(key)
                    user.on_cancel(cancel, source, key, invite)
                case DeliverAck(request=ack, source=source):
                    user.on_ack(ack, source)
                case DeliverResponse(response=response, key=key):
                    if (listener := self._listeners.get(key)) is not None:
                        listener.on_response(key, response)
                case StrayResponse(response=response, source=source):
                    user.on_stray_response(response, source)
                case TransactionTimedOut(key=key):
                    if (listener := self._listeners.get(key)) is not None:
                        listener.on_timeout(key)
                case TransactionFailed(key=key):
                    if (listener := self._listeners.get(key)) is not None:
                        listener.on_transport_error(key)
                case TransactionTerminated(key=key):
                    _ACTIVE[_kind(key)] -= 1
                    self._listeners.pop(key, None)
        for key in failed:
            self._step(TransportFailed(key))

    def _transmit(self, message: Request | Response, destination: Endpoint) -> bool:
        assert self._sender is not None
        try:
            self._sender.send(message, destination)
        except (TransportError, OSError, ValueError) as exc:
            log.info("send failed", peer=_peer(destination), error=str(exc))
            return False
        return True

    def close(self) -> None:
        """Stop the timer; transactions still open are abandoned."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def _peer(endpoint: Endpoint) -> str:
    return f"{endpoint.transport}:{endpoint.host}:{endpoint.port}"
