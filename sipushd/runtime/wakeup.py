"""Push-and-hold for INVITE (RFC 8599 §5.6.2): wake a call's phones, fork to each as it registers.

`CallWaker` is the proxy's half for an INVITE to a local AOR. It forks the INVITE to
the bindings it can reach now and pushes those with push parameters
(`push.mode: always`: at once; `unreachable`: when the flow is gone or no provisional
answer came within `push.delay`), answers `110 Push sent` and holds the INVITE for
`routing.call_timeout` (then 480 or the best response, §16.7). When a pushed device
registers again the INVITE is forked to it, once per device, whatever number of
REGISTERs it sends. A call that ends while devices are still waking up sends the ones
woken by an alert / data push a missed-call push; the ones woken by a VoIP push get
the INVITE and then a CANCEL when they register, so CallKit shows the call.

`ProxyCore` (runtime/proxy.py) routes the request and tells the waker when the call
starts, is CANCELled or finishes, and when a device registers. Timers run on the
event loop; push deadlines are UNIX times computed from the `now` the proxy passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Protocol

import structlog

from sipushd import metrics
from sipushd.core.binding import Binding
from sipushd.core.payload import PushKind, PushRequest, PushService
from sipushd.core.proxy import bindings_matching, push_requests_for
from sipushd.push.base import PushResult
from sipushd.runtime.engine import Engine
from sipushd.runtime.forking import Branch, ForwardContext
from sipushd.runtime.held import HeldCall, Wakeup, device_id
from sipushd.sip import Endpoint, Response, make_response
from sipushd.sip.transaction import TransactionKey

if TYPE_CHECKING:
    from sipushd.runtime.proxy import ProxySettings

__all__ = ["CallWaker", "Fork", "PushSender"]

log = structlog.get_logger("sipushd.proxy")

# ProxyCore.fork_to: fork a context's request to one binding under a label (None: its
# device id); None when the binding cannot be reached.
Fork = Callable[[ForwardContext, Binding, str | None], Branch | None]


class PushSender(Protocol):
    """What the proxy needs of the push dispatcher."""

    def submit(self, request: PushRequest) -> asyncio.Future[PushResult]:
        """Queue one push; the future resolves to its result."""
        ...


class CallWaker:
    """The INVITEs held for waking phones, by AOR; see the module docstring."""

    def __init__(
        self,
        engine: Engine,
        pushes: PushSender,
        fork: Fork,
        flow_alive: Callable[[Endpoint], bool],
    ) -> None:
        self.engine = engine
        self.pushes = pushes  # SIGHUP replaces the dispatcher (ProxyCore.pushes)
        self._fork = fork
        self._flow_alive = flow_alive
        self._loop = asyncio.get_running_loop()
        self._calls: dict[TransactionKey, HeldCall] = {}
        self._held: dict[str, set[HeldCall]] = {}

    @property
    def held_calls(self) -> int:
        """INVITEs currently held for a waking phone."""
        return sum(len(calls) for calls in self._held.values())

    def held(self) -> list[dict[str, object]]:
        """The held INVITEs and their pushed devices (for the admin API)."""
        now = self._loop.time()
        return [call.view(now) for calls in self._held.values() for call in calls]

    def start(
        self,
        context: ForwardContext,
        aor: str,
        bindings: list[Binding],
        settings: ProxySettings,
        now: float,
    ) -> None:
        """Fork an INVITE to `aor`'s reachable bindings, push the others and hold it.

        `now` is UNIX time: the pushes expire with the call (`routing.call_timeout`).
        """
        call = HeldCall(context, aor, self._loop.time())
        context.holding = call.waiting
        self._calls[context.key] = call
        deadline = now + settings.call_timeout
        with context.forking():
            self._fork_or_push(call, bindings, deadline, settings)
        if call.wakeups:
            call.held = True
            metrics.HELD_REQUESTS.labels(method="INVITE").inc()
            self._held.setdefault(aor, set()).add(call)
            if settings.push_sent_response and not context.finished:
                self.engine.respond(context.key, make_response(context.request, 110, "Push sent"))
        if context.finished:
            self._end_call(call)
            return
        call.timer = self._loop.call_later(settings.call_timeout, self._timeout, call)
        interval = settings.call_remote_push_interval
        if interval and call.may_ring_by_alert():
            call.repeat = self._loop.call_later(interval, self._ring_again, call, interval)

    def on_cancelled(self, key: TransactionKey) -> None:
        """The caller CANCELled the INVITE of server transaction `key` (§16.10)."""
        call = self._calls.get(key)
        if call is not None:
            call.cancelled = True

    def on_finished(self, context: ForwardContext) -> None:
        """`context` sent its final response: end its call, unless VoIP devices still wake."""
        call = self._calls.get(context.key)
        if call is None:
            return
        if call.repeat is not None:
            call.repeat.cancel()
            call.repeat = None
        ended_early = call.cancelled or context.answered
        if ended_early:
            # Devices still waking up: "missed call" / "accepted elsewhere" alerts.
            self._missed_call_pushes(call, context.cancel_reason)
        if not (ended_early and call.voip_waiting()):
            self._end_call(call)

    def on_registered(self, binding: Binding) -> None:
        """A device registered; fork the held INVITEs it was pushed for to it (once)."""
        for call in list(self._held.get(binding.aor, ())):
            for wakeup in call.wakeups.values():
                if wakeup.state == "registered":
                    continue
                if not bindings_matching(binding, [wakeup.binding]):
                    continue
                wakeup.state = "registered"
                wakeup.registered_at = self._loop.time()
                # After this call returns the registrar sends its 2xx: the INVITE follows it.
                self._loop.call_soon(self._wake, call, wakeup, binding)

    def stop_timers(self) -> None:
        """Stop every call's timeout and repeated ringing alerts (shutdown)."""
        for call in list(self._calls.values()):
            call.stop_timers()

    def _fork_or_push(
        self, call: HeldCall, bindings: list[Binding], deadline: float, settings: ProxySettings
    ) -> None:
        context = call.context
        for binding in bindings:
            alive = binding.flow.reliable and self._flow_alive(binding.flow)
            pushes = push_requests_for(binding, context.request, deadline=deadline)
            if binding.push is None or alive:
                branch = self._fork(context, binding, None)
                if branch is not None:
                    call.forked[device_id(binding)] = branch
                    branch.on_event = self._branch_event(call)
            if not pushes:
                continue
            if settings.push_mode == "always" or not alive:
                self._push(call, binding, pushes[0])
            else:
                self._push_later(call, binding, pushes[0], settings.push_delay)

    def _push(self, call: HeldCall, binding: Binding, push: PushRequest) -> None:
        wakeup = Wakeup(binding, push, self._loop.time())
        call.wakeups[device_id(binding)] = wakeup
        future = self.pushes.submit(push)
        future.add_done_callback(lambda f: self._pushed(call, wakeup, f))

    def _push_later(
        self, call: HeldCall, binding: Binding, push: PushRequest, delay: float
    ) -> None:
        """`push.mode: unreachable`: push only if the live flow stays silent for push.delay."""
        wakeup = Wakeup(binding, push, self._loop.time(), state="scheduled")
        call.wakeups[device_id(binding)] = wakeup

        def check() -> None:
            branch = call.forked.get(device_id(binding))
            if wakeup.state != "scheduled" or call.context.finished:
                return
            if branch is not None and branch.provisional and not branch.done:
                wakeup.state = "failed"  # it rings: no push needed
                return
            wakeup.state = "pushing"
            wakeup.pushed_at = self._loop.time()
            future = self.pushes.submit(push)
            future.add_done_callback(lambda f: self._pushed(call, wakeup, f))

        self._loop.call_later(delay, check)

    def _pushed(self, call: HeldCall, wakeup: Wakeup, future: asyncio.Future[PushResult]) -> None:
        delivered = not future.cancelled() and future.result().delivered
        if wakeup.state != "pushing":
            return
        wakeup.state = "pushed" if delivered else "failed"
        if not delivered:
            # A push that failed is a failed branch: this device will not register.
            call.context.check_done()

    def _ring_again(self, call: HeldCall, interval: float) -> None:
        """Repeat the IC_MSG alert of devices still ringing by alert push.

        The repeat keeps the Call-ID as apns-collapse-id, so iOS replaces the
        notification; its `sequence` makes it a new push for the dispatcher.
        """
        call.repeat = None
        for wakeup in call.ringing_by_alert():
            wakeup.repeats += 1
            self.pushes.submit(replace(wakeup.push, sequence=wakeup.repeats))
        if call.may_ring_by_alert():
            call.repeat = self._loop.call_later(interval, self._ring_again, call, interval)

    def _wake(self, call: HeldCall, wakeup: Wakeup, binding: Binding) -> None:
        context = call.context
        ident = device_id(wakeup.binding)
        prior = call.forked.get(ident)
        if prior is not None and not (prior.done and prior.status in (0, 408)):
            return  # this device already has the INVITE
        late = context.finished
        ended_early = call.cancelled or context.answered
        if late and not (ended_early and wakeup.push.service is PushService.VOIP):
            return
        branch = self._fork(context, binding, ident)
        if branch is None:
            context.check_done()
            return
        branch.on_event = self._branch_event(call)
        call.forked[ident] = branch
        wakeup.forwarded_at = self._loop.time()
        provider = wakeup.push.provider
        metrics.WAKEUPS.labels(provider=provider).inc()
        if wakeup.registered_at is not None:
            metrics.WAKEUP_LATENCY.labels(provider=provider).observe(
                wakeup.registered_at - wakeup.pushed_at
            )
        if late and not call.voip_waiting():
            self._end_call(call)

    def _branch_event(self, call: HeldCall) -> Callable[[Branch, Response | None], None]:
        def event(branch: Branch, response: Response | None) -> None:
            wakeup = call.wakeups.get(branch.label or "")
            if wakeup is not None and branch.done:
                wakeup.answered = branch.status
                if wakeup.waiting and branch.status not in (0, 408):
                    # The device is awake and gave its answer: stop waiting for it.
                    wakeup.state = "answered"

        return event

    def _timeout(self, call: HeldCall) -> None:
        """routing.call_timeout: nobody answered; 480 or the best response (§16.7)."""
        call.timer = None
        call.context.finish_best(480)
        self._end_call(call)

    def _end_call(self, call: HeldCall) -> None:
        call.stop_timers()
        calls = self._held.get(call.aor)
        if calls is not None:
            calls.discard(call)
            if not calls:
                del self._held[call.aor]
        call.forked.clear()  # breaks the call <-> branch cycle (see ForwardContext)
        if self._calls.pop(call.context.key, None) is None:
            return
        if call.held:
            metrics.HELD_REQUESTS.labels(method="INVITE").dec()
        for fields in call.story():
            log.info("wake-up", **fields)

    def _missed_call_pushes(self, call: HeldCall, reason: str | None) -> None:
        """Devices woken by an alert / data push get a missed-call push (RFC 3326 reason)."""
        for wakeup in call.wakeups.values():
            if not wakeup.waiting or wakeup.push.service is PushService.VOIP:
                continue
            wakeup.state = "failed"
            for push in push_requests_for(
                wakeup.binding,
                call.context.request,
                deadline=wakeup.push.deadline,
                kind=PushKind.MISSED_CALL,
            ):
                self.pushes.submit(replace(push, cancel_reason=reason))
