"""The response context of one proxied server transaction (RFC 3261 §16.7).

A `ForwardContext` owns one server transaction and the client transactions
(branches) it forked. It relays provisional responses and every 2xx to the
caller, CANCELs the other branches once one answered (§16.7 step 10, with an
RFC 3326 Reason), and, when every branch is done and nothing else holds the
context open (a phone still waking up), sends the best final response
(§16.7 step 6). CANCEL is only sent on a branch after it answered
provisionally (§9.1); until then it is remembered.

Timer C (§16.6 step 11, §16.8) runs on every INVITE branch and restarts on each
provisional response: when it fires, a branch that answered provisionally is
CANCELled, and either way it counts as a 408 for the best response.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import structlog

from sipushd.core.proxy import (
    CALL_COMPLETED_ELSEWHERE,
    best_response,
    build_cancel,
    build_teardown,
    response_upstream,
)
from sipushd.runtime.engine import Engine
from sipushd.runtime.server import new_tag
from sipushd.sip import Endpoint, Request, Response, make_response
from sipushd.sip.transaction import TransactionError, TransactionKey, client_key
from sipushd.transport import TransportError

log = structlog.get_logger("sipushd.proxy")


def _never() -> bool:
    return False


@dataclass(eq=False)
class Branch:
    """One client transaction of a context; it is its own `ClientListener`."""

    context: ForwardContext
    request: Request
    destination: Endpoint
    label: str | None = None
    key: TransactionKey = field(init=False)
    provisional: bool = False
    status: int | None = None  # final status; 0 = failed without a response
    cancel_reason: str | None = None
    cancel_wanted: bool = False
    cancel_sent: bool = False
    torn_down: bool = False
    on_event: Callable[[Branch, Response | None], None] | None = None
    timer_c: asyncio.TimerHandle | None = None

    def __post_init__(self) -> None:
        self.key = client_key(self.request)

    @property
    def done(self) -> bool:
        """True once a final response (or a failure) ended the branch."""
        return self.status is not None

    def on_response(self, key: TransactionKey, response: Response) -> None:
        """ClientListener: a response of this branch."""
        self.context.branch_response(self, response)

    def on_timeout(self, key: TransactionKey) -> None:
        """ClientListener: Timer B/F, act as on a 408 (§16.7 step 2 / §16.8)."""
        self.context.branch_failed(self, 408)

    def on_transport_error(self, key: TransactionKey) -> None:
        """ClientListener: could not send (§16.7 step 2 / §8.1.3.1)."""
        self.context.branch_failed(self, 0)


class ForwardContext:
    """A server transaction forked to one or more branches, with its response context."""

    def __init__(
        self,
        engine: Engine,
        request: Request,
        source: Endpoint,
        key: TransactionKey,
        *,
        holding: Callable[[], bool] = _never,
        on_finished: Callable[[ForwardContext], None] | None = None,
        timer_c: float | None = None,
    ) -> None:
        self.engine = engine
        self.request = request
        self.source = source
        self.key = key
        self.branches: list[Branch] = []
        self.responses: list[Response] = []
        self.final: Response | None = None
        self.answered = False
        self.holding = holding
        self.on_finished = on_finished
        self.to_tag = new_tag()
        self.cancel_reason: str | None = None  # the caller's CANCEL Reason (RFC 3326)
        self.timer_c = timer_c  # seconds, > 3 min in production (§16.6 step 11)
        self._starting = 0

    @property
    def finished(self) -> bool:
        """True once the caller has its final response."""
        return self.final is not None

    @property
    def active(self) -> list[Branch]:
        """Branches still waiting for a final response."""
        return [b for b in self.branches if not b.done]

    @contextmanager
    def forking(self) -> Iterator[None]:
        """Open several branches: the best response waits until all are started."""
        self._starting += 1
        try:
            yield
        finally:
            self._starting -= 1
        self.check_done()

    # --- branches --------------------------------------------------------------------

    def fork(self, request: Request, destination: Endpoint, label: str | None = None) -> Branch:
        """Send `request` on a new branch (a client transaction) to `destination`."""
        branch = Branch(self, request, destination, label)
        self.branches.append(branch)
        if self.finished:
            # A late branch (a phone registering after the caller gave up) is only
            # opened to be cancelled, so the phone shows a missed call.
            branch.cancel_wanted = True
            branch.cancel_reason = self.cancel_reason
        self._starting += 1
        try:
            self.engine.send_request(request, destination, branch)
        except (TransactionError, TransportError, ValueError) as exc:
            log.info("branch not sent", call_id=request.call_id, error=str(exc))
            branch.status = 0
        finally:
            self._starting -= 1
        self._start_timer_c(branch)
        self.check_done()
        return branch

    # --- Timer C (§16.6 step 11, §16.8) ----------------------------------------------

    def _start_timer_c(self, branch: Branch) -> None:
        """(Re)start Timer C of an INVITE branch still waiting for its final response."""
        self._stop_timer_c(branch)
        if self.timer_c is None or branch.done or branch.request.method != "INVITE":
            return
        loop = asyncio.get_running_loop()
        branch.timer_c = loop.call_later(self.timer_c, self._timer_c_fired, branch)

    @staticmethod
    def _stop_timer_c(branch: Branch) -> None:
        if branch.timer_c is not None:
            branch.timer_c.cancel()
            branch.timer_c = None

    def _timer_c_fired(self, branch: Branch) -> None:
        """§16.8: CANCEL a branch that rang too long; the branch counts as a 408."""
        branch.timer_c = None
        if branch.done:
            return
        log.info("Timer C fired", call_id=self.request.call_id, provisional=branch.provisional)
        if not branch.cancel_wanted:
            branch.cancel_wanted = True
            if branch.provisional:
                self._send_cancel(branch)
        self.branch_failed(branch, 408)

    def stop_timers(self) -> None:
        """Cancel the Timer C of every branch (the daemon is stopping)."""
        for branch in self.branches:
            self._stop_timer_c(branch)

    def branch_response(self, branch: Branch, response: Response) -> None:
        """§16.7: a response arrived on `branch`."""
        if branch.done and response.status < 200:
            if branch.cancel_wanted and not branch.cancel_sent:
                self._send_cancel(branch)  # Timer C fired before this provisional (§9.1)
            return
        if branch.done and response.status >= 300:
            return  # the branch ended already (Timer C): its 487 changes nothing
        upstream = response_upstream(response)
        if response.status < 200:
            branch.provisional = True
            if response.status > 100:
                self._start_timer_c(branch)  # §16.7 step 2: reset by 101-199
            if branch.cancel_wanted and not branch.cancel_sent:
                self._send_cancel(branch)
            elif response.status > 100 and not self.finished:
                # §16.7 step 5: provisional responses other than 100 go upstream at once.
                self.engine.respond(self.key, upstream)
            self._notify(branch, response)
            return
        branch.status = response.status
        self._stop_timer_c(branch)
        self._notify(branch, response)
        if 200 <= response.status < 300:
            self._answered(branch, upstream)
            return
        if not self.finished:
            self.responses.append(upstream)
        self.check_done()
        self._release_if_idle()

    def _answered(self, branch: Branch, upstream: Response) -> None:
        if self.finished and not self.answered:
            # The caller already has a non-2xx final response: end the phone's dialog.
            self._tear_down(branch, upstream)
            return
        # §16.7 step 5: every 2xx is forwarded; §16.7 step 10: the other branches lose.
        self.engine.respond(self.key, upstream)
        first = not self.answered
        self.answered = True
        if self.final is None:
            self.final = upstream
        if first:
            if self.cancel_reason is None:
                self.cancel_reason = CALL_COMPLETED_ELSEWHERE
            self.cancel_all(self.cancel_reason)
            self._finished()

    def _tear_down(self, branch: Branch, response: Response) -> None:
        ack, bye = build_teardown(branch.request, response)
        requests = [ack] if branch.torn_down else [ack, bye]
        branch.torn_down = True
        log.info("2xx after the final response: ACK and BYE", call_id=self.request.call_id)
        for request in requests:
            try:
                self.engine.send_request(request, branch.destination, None)
            except (TransactionError, TransportError, ValueError) as exc:
                log.info("teardown not sent", call_id=request.call_id, error=str(exc))

    def branch_failed(self, branch: Branch, status: int) -> None:
        """No final response came: a timeout (408) or a transport failure (0)."""
        if branch.done:
            return
        branch.status = status
        self._stop_timer_c(branch)
        if status and not self.finished:
            self.responses.append(make_response(self.request, status, to_tag=self.to_tag))
        self._notify(branch, None)
        self.check_done()
        self._release_if_idle()

    def _notify(self, branch: Branch, response: Response | None) -> None:
        if branch.on_event is not None:
            branch.on_event(branch, response)

    # --- CANCEL ----------------------------------------------------------------------

    def cancel_all(self, reason: str | None) -> None:
        """CANCEL every pending INVITE branch (§16.10, §16.7 step 10)."""
        for branch in self.active:
            self.cancel_branch(branch, reason)

    def cancel_branch(self, branch: Branch, reason: str | None) -> None:
        """CANCEL one branch now, or after its first provisional response (§9.1)."""
        if branch.done or branch.request.method != "INVITE" or branch.cancel_wanted:
            return
        branch.cancel_wanted = True
        branch.cancel_reason = reason
        if branch.provisional:
            self._send_cancel(branch)

    def _send_cancel(self, branch: Branch) -> None:
        branch.cancel_sent = True
        cancel = build_cancel(branch.request, branch.cancel_reason)
        try:
            self.engine.send_request(cancel, branch.destination, None)
        except (TransactionError, TransportError, ValueError) as exc:
            log.info("CANCEL not sent", call_id=cancel.call_id, error=str(exc))

    # --- the end ---------------------------------------------------------------------

    def check_done(self) -> None:
        """Send the best response once no branch is pending and nothing holds us (§16.7)."""
        if self.finished or self._starting or self.active or self.holding():
            return
        self.finish_best()

    def finish_best(self, default: int = 480) -> None:
        """Answer the best response collected, or `default` when there is none."""
        if self.responses:
            self.finish(best_response(self.request, self.responses))
        else:
            self.finish(self.reply(default))

    def reply(self, status: int, reason: str | None = None) -> Response:
        """A final response generated by the proxy itself."""
        return make_response(self.request, status, reason, to_tag=self.to_tag)

    def finish(self, response: Response) -> None:
        """Send the final response (once) and CANCEL what is still pending."""
        if self.finished:
            return
        self.final = response
        self.engine.respond(self.key, response)
        self.cancel_all(self.cancel_reason)
        self._finished()

    def _finished(self) -> None:
        if self.on_finished is not None:
            self.on_finished(self)
        self._release_if_idle()

    def _release_if_idle(self) -> None:
        """Break the context <-> branch cycles once the outcome is settled.

        A call's messages are then freed by reference counting when the transaction
        layer lets go of its branches, instead of piling up for a full GC pass (whose
        pause grows with them and delays every message).
        """
        if self.final is None or self._starting or self.active:
            return
        for branch in self.branches:
            branch.on_event = None
        self.branches = []
        self.responses = []
        self.holding = _never
