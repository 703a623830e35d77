"""Stateless forwarding of a CANCEL that matches no transaction (RFC 3261 §16.10, §16.11).

With no response context the proxy does not know the INVITE the CANCEL is for (it
may have been forwarded statelessly, or by a process that has since restarted),
so it forwards the CANCEL without a client transaction, on the branch
`stateless_branch` derives from the received one. The transaction layer gave the
CANCEL a server transaction of its own: the next hop's answer, which comes back
as a stray response naming our branch in its top Via, is sent through it (so the
caller's retransmissions get it too). Over UDP the forwarded CANCEL is sent again
at Timer E intervals until answered (§17.1.2.2). After 64*T1 without an answer the
caller's client transaction has timed out (Timer F); a 408 then only frees our
server transaction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import structlog

from sipushd.core.proxy import (
    ForwardTarget,
    ProxyIdentity,
    forward_request,
    response_upstream,
    stateless_branch,
)
from sipushd.runtime.engine import Engine, Sender
from sipushd.runtime.server import new_tag
from sipushd.sip import Endpoint, Request, Response, make_response
from sipushd.sip.transaction import TimerConfig, TransactionKey
from sipushd.transport import TransportError

log = structlog.get_logger("sipushd.proxy")


@dataclass(eq=False)
class _Pending:
    """One forwarded CANCEL waiting for the next hop's answer."""

    cancel: Request  # as received: our server transaction answers it
    key: TransactionKey
    forwarded: Request
    destination: Endpoint
    expiry: asyncio.TimerHandle | None = None
    resend: asyncio.TimerHandle | None = None

    def stop(self) -> None:
        for handle in (self.expiry, self.resend):
            if handle is not None:
                handle.cancel()
        self.expiry = self.resend = None


class CancelRelay:
    """CANCELs forwarded statelessly, by the branch they were sent on."""

    def __init__(
        self, engine: Engine, network: Sender, identity: ProxyIdentity, timers: TimerConfig
    ) -> None:
        self.engine = engine
        self.network = network
        self.identity = identity
        self.timers = timers
        self._loop = asyncio.get_running_loop()
        self._pending: dict[str, _Pending] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def forward(
        self,
        cancel: Request,
        key: TransactionKey,
        stripped: Request,
        target: ForwardTarget | None,
    ) -> None:
        """Forward `cancel` (server transaction `key`; `stripped` of our Routes) to `target`.

        Without a target, or when it cannot be sent, no INVITE can be cancelled through
        us: 481 (§9.2).
        """
        branch = stateless_branch(stripped)
        if target is None or branch in self._pending:
            self._reply(cancel, key, 481)
            return
        forwarded = forward_request(
            stripped, target, self.identity, branch=branch, record_route=False
        )
        destination = target.destination
        if not self._send(forwarded, destination):
            self._reply(cancel, key, 481)
            return
        pending = _Pending(cancel, key, forwarded, destination)
        self._pending[branch] = pending
        t1 = self.timers.t1
        pending.expiry = self._loop.call_later(64 * t1, self._expired, branch, pending)
        if not destination.reliable:
            pending.resend = self._loop.call_later(t1, self._resend, pending, t1)

    def answer(self, response: Response) -> bool:
        """A stray response to a CANCEL we forwarded: pass it to the caller (True if ours)."""
        if response.cseq.method != "CANCEL" or response.status < 200:
            return False
        pending = self._pending.pop(response.top_via.branch or "", None)
        if pending is None:
            return False
        pending.stop()
        self.engine.respond(pending.key, response_upstream(response))
        return True

    def close(self) -> None:
        """Stop every timer; the server transactions are abandoned with the engine."""
        for pending in self._pending.values():
            pending.stop()
        self._pending.clear()

    def _reply(self, cancel: Request, key: TransactionKey, status: int) -> None:
        self.engine.respond(key, make_response(cancel, status, to_tag=new_tag()))

    def _send(self, request: Request, destination: Endpoint) -> bool:
        try:
            self.network.send(request, destination)
        except (TransportError, OSError, ValueError) as exc:
            log.info("CANCEL not forwarded", call_id=request.call_id, error=str(exc))
            return False
        return True

    def _resend(self, pending: _Pending, interval: float) -> None:
        """Timer E for a CANCEL sent without a client transaction (§17.1.2.2)."""
        pending.resend = None
        self._send(pending.forwarded, pending.destination)
        interval = min(2 * interval, self.timers.t2)
        pending.resend = self._loop.call_later(interval, self._resend, pending, interval)

    def _expired(self, branch: str, pending: _Pending) -> None:
        pending.expiry = None
        pending.stop()
        if self._pending.get(branch) is pending:
            del self._pending[branch]
            self._reply(pending.cancel, pending.key, 408)
