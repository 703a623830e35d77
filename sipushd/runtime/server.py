"""The server core: the transaction user that validates requests and routes them by method.

It answers what needs no other part of sipushd (OPTIONS to the server, the §8.2 / §16.3
checks) and hands REGISTER, INVITE, MESSAGE, ... to the handler registered for the
method. Requests that are not addressed to the server itself (in-dialog requests, and
Request-URIs naming a user or another host, as `is_for_us` decides) go to
`forward_handler`, the proxy. Requests it cannot serve get the status RFC 3261 asks for:
416 for a URI scheme it does not serve, 420 for an unsupported Proxy-Require (and Require,
for requests it answers itself: a proxy ignores Require, §16.3 step 5), 483 when
Max-Forwards is exhausted, 405 for a known method without a handler, 501 for an unknown
method. When overloaded (more live transactions than `max_transactions`, more received
datagrams waiting to be read than `max_backlog` bytes, or an `overload_checks` hook says
so, e.g. a full push queue) a new INVITE or MESSAGE gets 503 with Retry-After (§21.5.4)
instead of work the daemon cannot finish; REGISTER, CANCEL, ACK and in-dialog requests
still pass. The backlog is what stops a retransmission storm: a request that waits
longer than timer A in the socket is sent again (§17.1.1.2), and every copy adds to
the queue; a 503 ends the new call at once and leaves the time to the calls under way.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable

import structlog

from sipushd.runtime.engine import Engine
from sipushd.sip import Endpoint, Request, Response, SipParseError, SipUri, make_response
from sipushd.sip.transaction import TransactionKey

log = structlog.get_logger("sipushd.server")

# RFC 3261 §27.4 plus the extensions sipushd's peers send.
KNOWN_METHODS = frozenset(
    {
        "ACK", "BYE", "CANCEL", "INFO", "INVITE", "MESSAGE", "NOTIFY",
        "OPTIONS", "PRACK", "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE",
    }
)  # fmt: skip
# Option tags sipushd implements: RFC 3327 Path, RFC 5627 GRUU, RFC 5626 outbound.
SUPPORTED_EXTENSIONS = ("path", "gruu", "outbound")
SERVED_SCHEMES = frozenset({"sip", "sips"})

RequestHandler = Callable[[Request, Endpoint, TransactionKey], None]

# Requests that start new work (a call, a message to store and push): shed when overloaded.
SHED_METHODS = frozenset({"INVITE", "MESSAGE"})
DEFAULT_MAX_TRANSACTIONS = 50_000
DEFAULT_MAX_BACKLOG = 2 * 1024 * 1024  # bytes
DEFAULT_RETRY_AFTER = 10


def new_tag() -> str:
    """A fresh To tag for a response sipushd generates as a UAS (§8.2.6.2)."""
    return secrets.token_hex(6)


class ServerCore:
    """The TU: request validation, OPTIONS, and dispatch to per-method handlers."""

    def __init__(self, engine: Engine, *, user_agent: str = "sipushd") -> None:
        self.engine = engine
        self.user_agent = user_agent
        self.handlers: dict[str, RequestHandler] = {}
        self.cancel_handler: (
            Callable[[Request, Endpoint, TransactionKey, TransactionKey | None], None] | None
        ) = None
        self.ack_handler: Callable[[Request, Endpoint], None] | None = None
        self.stray_response_handler: Callable[[Response, Endpoint], None] | None = None
        # The proxy: requests for someone else; `is_for_us` tells them apart.
        self.forward_handler: RequestHandler | None = None
        self.is_for_us: Callable[[SipUri], bool] = lambda uri: True
        # Overload protection: live transactions allowed, other "too busy" signals.
        self.max_transactions = DEFAULT_MAX_TRANSACTIONS
        # (bytes waiting, queue size) of received datagrams not yet read: the transport's
        # `udp_backlog`. Over `max_backlog`, or three quarters of the queue when that is
        # less (a kernel with a low net.core.rmem_max), the server is overloaded: before the
        # kernel drops what the calls under way need.
        self.backlog: Callable[[], tuple[int, int]] = lambda: (0, 0)
        self.max_backlog = DEFAULT_MAX_BACKLOG
        self.overload_checks: list[Callable[[], bool]] = []
        self.retry_after = DEFAULT_RETRY_AFTER
        self._shedding = False

    @property
    def allow(self) -> str:
        """The Allow header value: OPTIONS, ACK, CANCEL and every handled method."""
        methods = {"OPTIONS", "ACK", "CANCEL", *self.handlers}
        return ", ".join(sorted(methods))

    def reply(
        self,
        key: TransactionKey,
        request: Request,
        status: int,
        reason: str | None = None,
        headers: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> Response:
        """Answer server transaction `key` as a UAS (adds a To tag to non-100 answers)."""
        tag = None if status == 100 else new_tag()
        response = make_response(
            request,
            status,
            reason,
            to_tag=tag,
            headers=[*headers, ("Server", self.user_agent)],
            body=body,
        )
        self.engine.respond(key, response)
        return response

    # --- TransactionUser -------------------------------------------------------------

    def on_request(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        """Validate `request` (§8.2, §16.3) and pass it to its method's handler."""
        forward = self.forward_handler is not None and self._forwarded(request)
        if (problem := self._check(request, local=not forward)) is not None:
            status, reason, headers = problem
            self.reply(key, request, status, reason, headers)
            return
        if request.method in SHED_METHODS and not _dialog(request) and self._shed():
            self.reply(key, request, 503, headers=[("Retry-After", str(self.retry_after))])
            return
        handler = self.handlers.get(request.method)
        if forward and self.forward_handler is not None and (handler is None or _dialog(request)):
            self.forward_handler(request, source, key)
        elif handler is not None:
            handler(request, source, key)
        elif request.method == "OPTIONS":
            self._options(request, key)
        elif request.method in KNOWN_METHODS:
            self.reply(key, request, 405, headers=[("Allow", self.allow)])
        else:
            self.reply(key, request, 501, headers=[("Allow", self.allow)])

    def on_cancel(
        self,
        cancel: Request,
        source: Endpoint,
        key: TransactionKey,
        invite_key: TransactionKey | None,
    ) -> None:
        """§9.2: 200 to the CANCEL and 487 to its INVITE, unless a handler takes it."""
        if self.cancel_handler is not None:
            self.cancel_handler(cancel, source, key, invite_key)
            return
        if invite_key is None:
            self.reply(key, cancel, 481)
            return
        self.reply(key, cancel, 200)
        # §9.2: the 487 answers the INVITE, so its CSeq names INVITE, not CANCEL.
        cseq = f"{cancel.cseq.seq} INVITE"
        invite = cancel.replace(method="INVITE", headers=cancel.headers.set("CSeq", cseq))
        self.engine.respond(invite_key, make_response(invite, 487, to_tag=new_tag()))

    def on_ack(self, ack: Request, source: Endpoint) -> None:
        """An ACK for a 2xx: the proxy forwards it; otherwise there is nothing to do."""
        if self.ack_handler is not None:
            self.ack_handler(ack, source)

    def on_stray_response(self, response: Response, source: Endpoint) -> None:
        """A response without a transaction: the proxy forwards it; otherwise dropped."""
        if self.stray_response_handler is not None:
            self.stray_response_handler(response, source)

    def overloaded(self) -> bool:
        """True when new calls and messages must wait (see the module docstring)."""
        if len(self.engine.layer) > self.max_transactions:
            return True
        if self.max_backlog:
            waiting, size = self.backlog()
            if waiting > min(self.max_backlog, size * 3 // 4):
                return True
        return any(check() for check in self.overload_checks)

    def _shed(self) -> bool:
        """`overloaded()`, logged once when shedding starts and once when it stops."""
        overloaded = self.overloaded()
        if overloaded != self._shedding:
            self._shedding = overloaded
            if overloaded:
                log.warning(
                    "overloaded: new INVITE / MESSAGE get 503",
                    transactions=len(self.engine.layer),
                    udp_backlog=self.backlog()[0],
                )
            else:
                log.info("no longer overloaded")
        return overloaded

    # --- checks and OPTIONS ----------------------------------------------------------

    def _forwarded(self, request: Request) -> bool:
        """True for a request the proxy forwards rather than the server answering it."""
        if request.method == "REGISTER":
            return False
        try:
            if _dialog(request) or request.routes:
                return True
        except SipParseError:
            return False
        return request.uri.user is not None or not self.is_for_us(request.uri)

    def _check(
        self, request: Request, *, local: bool = True
    ) -> tuple[int, str | None, list[tuple[str, str]]] | None:
        if request.uri.scheme not in SERVED_SCHEMES:
            return 416, None, []
        # §8.2.2.3 for requests we answer; §16.3 step 5: a proxy looks at Proxy-Require only.
        tags = (*request.require, *request.proxy_require) if local else request.proxy_require
        unsupported = [tag for tag in tags if tag.lower() not in SUPPORTED_EXTENSIONS]
        if unsupported and request.method not in ("ACK", "CANCEL"):
            return 420, None, [("Unsupported", ", ".join(unsupported))]
        # §16.3 step 3; an OPTIONS for the server itself is answered by it (§11).
        if request.max_forwards == 0 and not (local and request.method == "OPTIONS"):
            return 483, None, []
        return None

    def _options(self, request: Request, key: TransactionKey) -> None:
        # §11.2: capabilities of the server itself.
        self.reply(
            key,
            request,
            200,
            headers=[
                ("Allow", self.allow),
                ("Supported", ", ".join(SUPPORTED_EXTENSIONS)),
                ("Accept", "application/sdp, text/plain, message/cpim"),
            ],
        )


def _dialog(request: Request) -> bool:
    """A request inside a dialog (To tag, §12.2)."""
    try:
        return request.to.tag is not None
    except SipParseError:
        return False
