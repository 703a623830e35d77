"""The MESSAGE service: forward to online phones, store and push for sleeping ones.

For a MESSAGE to an AOR of a served domain (RFC 3428, RFC 8599 §5.6.2):

- No binding: 480. An is-composing / IMDN MESSAGE (`sipushd.core.messages`) goes to
  the online devices only, and gets 480 when there is none.
- An instant message is first stored, durably, pending for every device bound now.
  Online devices get it at once (a client transaction each, RFC 3261 §16.6); sleeping
  ones with a push token get an alert push (call_id = the MESSAGE's Call-ID), and so do
  online ones that do not take it. The first 2xx goes back to the sender; without one,
  the sender gets `202 Accepted` after `accept_timeout` (well inside its Timer F), or the
  best response (§16.7 step 6) when every device refused it for good.
- Each time a device registers, the MESSAGEs it has not taken are sent to it, one at a
  time in arrival order, as new requests (new Via, Max-Forwards decremented, same
  Call-ID / From / To / body). A 2xx or a final refusal ends the device's copy; no
  answer, 408, 480 or 503 keep it for the next registration.
- The AOR's store is full: 486 unless an online device can take the MESSAGE, which is
  then forwarded without being stored.
- A push failure changes nothing in the store; expired MESSAGEs are purged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass, field, replace
from typing import Any

import structlog

from sipushd import metrics
from sipushd.core.binding import Binding
from sipushd.core.messages import (
    DeliveryOutcome,
    Device,
    MessagePlan,
    MessageSettings,
    StoredMessage,
    classify,
    delivery_outcome,
    message_id,
    plan_message,
    with_date,
)
from sipushd.core.payload import PushKind, PushRequest
from sipushd.core.proxy import (
    ProxyIdentity,
    best_response,
    find_loop,
    forward_request,
    new_branch,
    push_requests_for,
    response_upstream,
    strip_own_routes,
    target_for_binding,
)
from sipushd.runtime.server import ServerCore, new_tag
from sipushd.sip import Endpoint, Request, Response, SipParseError, make_response
from sipushd.sip.transaction import TransactionError, TransactionKey
from sipushd.store.base import BindingStore, StoreError
from sipushd.store.messages import DuplicateMessageError, MessageLimitError, MessageStore
from sipushd.transport import TransportError

log = structlog.get_logger("sipushd.messages")

# How long a message push may be retried and kept by APNs / FCM (seconds): the MESSAGE
# itself waits far longer, and reaches the phone whenever it registers.
PUSH_LIFETIME = 3600.0
PURGE_INTERVAL = 60.0

PushSubmit = Callable[[PushRequest], object]


@dataclass(eq=False)
class _Inbound:
    """One MESSAGE from a sender whose server transaction is still open."""

    request: Request
    key: TransactionKey
    stored: StoredMessage | None
    bindings: dict[str, Binding]
    open_devices: set[str] = field(default_factory=set)  # recipients not done yet
    pushed: set[str] = field(default_factory=set)
    branches: int = 0
    responses: list[Response] = field(default_factory=list)
    answered: bool = False
    timer: asyncio.TimerHandle | None = None


@dataclass(eq=False)
class _Branch:
    """The client transaction that forwards an inbound MESSAGE to one device."""

    service: MessageService
    inbound: _Inbound
    device: str
    done: bool = False

    def on_response(self, key: TransactionKey, response: Response) -> None:
        """ClientListener: provisional answers are not relayed (RFC 4320: 100 at most)."""
        if response.status >= 200:
            self.service._branch_done(self, response)

    def on_timeout(self, key: TransactionKey) -> None:
        """ClientListener: Timer F, as a 408 (RFC 3261 §16.8)."""
        self.service._branch_done(self, None)

    def on_transport_error(self, key: TransactionKey) -> None:
        """ClientListener: could not send (§8.1.3.1)."""
        self.service._branch_done(self, None)


@dataclass(eq=False)
class _Waiter:
    """The client transaction of one stored MESSAGE sent to a device that registered."""

    answer: asyncio.Future[Response | None]

    def on_response(self, key: TransactionKey, response: Response) -> None:
        """ClientListener: the final answer ends the wait."""
        if response.status >= 200 and not self.answer.done():
            self.answer.set_result(response)

    def on_timeout(self, key: TransactionKey) -> None:
        """ClientListener: Timer F."""
        if not self.answer.done():
            self.answer.set_result(None)

    def on_transport_error(self, key: TransactionKey) -> None:
        """ClientListener: could not send."""
        if not self.answer.done():
            self.answer.set_result(None)


class MessageService:
    """Handles MESSAGE for the served domains and delivers stored ones on registration."""

    def __init__(
        self,
        server: ServerCore,
        bindings: BindingStore,
        messages: MessageStore,
        *,
        settings: MessageSettings,
        domains: Collection[str],
        identity: ProxyIdentity | None,
        flow_alive: Callable[[Endpoint], bool],
        push: PushSubmit | None,
        clock: Callable[[], float],
    ) -> None:
        self.server = server
        self.bindings = bindings
        self.messages = messages
        self.settings = settings
        self.domains = frozenset(d.lower() for d in domains)
        self.identity = identity
        self.flow_alive = flow_alive
        self.push = push
        self.clock = clock
        self._inbound: dict[str, _Inbound] = {}  # stored ones, by message id
        self._unanswered: set[_Inbound] = set()
        self._sending: set[tuple[str, str]] = set()  # (message id, device) in flight
        self._runs: set[tuple[str, str]] = set()  # (aor, device) delivery runs
        self._rerun: set[tuple[str, str]] = set()
        self._latest: dict[tuple[str, str], Binding] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._run_tasks: set[asyncio.Task[None]] = set()
        self._housekeeping: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------

    def start(self, purge_interval: float = PURGE_INTERVAL) -> None:
        """Start purging expired MESSAGEs."""
        self._housekeeping = asyncio.create_task(self._purge_loop(purge_interval))

    async def close(self) -> None:
        """Answer 202 for stored MESSAGEs still waiting, stop delivering, finish store updates."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        for inbound in list(self._unanswered):
            if inbound.stored is not None:
                # Safe on disk: keep the accept timer's promise now.
                self._answer(inbound, self._reply(inbound, 202))
            elif inbound.timer is not None:
                inbound.timer.cancel()
        self._unanswered.clear()
        for task in self._run_tasks:
            task.cancel()  # waiting for answers that can no longer come
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=2.0)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, None], *, run: bool = False) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        if run:
            self._run_tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._run_tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("message task failed", error=repr(exc))

    # --- inbound MESSAGE -------------------------------------------------------------

    def handle(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        """ServerCore handler for MESSAGE."""
        try:
            elsewhere = not self._is_local(request)
        except SipParseError as exc:
            self.server.reply(key, request, 400, str(exc)[:80] or None)
            return
        if elsewhere:
            # Another domain, or a Route beyond us (§16.4): the proxy forwards it
            # (or refuses to relay).
            fallback = self.server.forward_handler
            if fallback is not None:
                fallback(request, source, key)
            else:
                self.server.reply(key, request, 404, "Domain Not Served Here")
            return
        if self.identity is not None and find_loop(request, self.identity):
            self.server.reply(key, request, 482)  # RFC 3261 §16.3 step 4
            return
        self._spawn(self._receive(request, source, key))

    def _is_local(self, request: Request) -> bool:
        """For a served domain, and no Route left once ours are removed (§16.4)."""
        if request.uri.host.lower() not in self.domains:
            return False
        if self.identity is not None:
            request, _ = strip_own_routes(request, self.identity)
        return not request.routes

    async def _receive(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        now = self.clock()
        if request.uri.user is None:
            self.server.reply(key, request, 404)  # the domain itself has no bindings
            return
        try:
            aor = request.uri.aor
            if self.identity is not None:
                request, _ = strip_own_routes(request, self.identity)
            kind = classify(request)
            found = await self._bindings_for(request, now)
        except SipParseError as exc:
            self.server.reply(key, request, 400, str(exc)[:80] or None)
            return
        except StoreError as exc:
            log.error("binding store failed", aor=request.uri.aor, error=str(exc))
            self.server.reply(key, request, 500, "Binding Store Unavailable")
            return
        devices = [self._device(b) for b in found]
        plan = plan_message(kind, devices, store_full=False)
        stored: StoredMessage | None = None
        if plan.store:
            gruu = request.uri.param("gr")
            stored = StoredMessage.from_request(
                message_id(f"{aor};gr={gruu}" if gruu else aor, request),
                aor,
                request,
                now,
                self.settings.delivery_timeout,
                device=found[0].key if gruu else None,
            )
            plan, stored = await self._store(stored, plan, devices)
        if plan.reject is not None:
            status, reason = plan.reject
            self.server.reply(key, request, status, reason)
            return
        self._route(_Inbound(request, key, stored, {b.key: b for b in found}), plan)

    async def _bindings_for(self, request: Request, now: float) -> list[Binding]:
        """The AOR's live bindings, or the one device a GRUU names (RFC 5627)."""
        uri = request.uri
        if uri.has_param("gr"):
            found = await self.bindings.by_gruu(str(uri), now)
            return [found] if found is not None else []
        return await self.bindings.get(uri.aor, now)

    def _route(self, inbound: _Inbound, plan: MessagePlan) -> None:
        """Forward, push, and start the accept timer (202 when it fires, RFC 3428)."""
        inbound.open_devices = set(plan.recipients)
        self._unanswered.add(inbound)
        if inbound.stored is not None:
            self._inbound[inbound.stored.id] = inbound
        log.info(
            "message",
            call_id=inbound.request.call_id,
            aor=inbound.request.uri.aor,
            kind=plan.kind.value,
            stored=inbound.stored is not None,
            forward=len(plan.forward),
            push=len(plan.push),
        )
        for device in plan.forward:
            self._forward(inbound, device)
        for device in plan.push:
            self._wake(inbound, device)
        loop = asyncio.get_running_loop()
        inbound.timer = loop.call_later(self.settings.accept_timeout, self._accept_timeout, inbound)
        self._check_answer(inbound)

    async def _store(
        self, stored: StoredMessage, plan: MessagePlan, devices: list[Device]
    ) -> tuple[MessagePlan, StoredMessage | None]:
        """Store the MESSAGE; on a full or broken store fall back to forwarding only."""
        try:
            await self.messages.add(
                stored, plan.recipients, limit=self.settings.max_per_aor, now=stored.arrived_at
            )
        except DuplicateMessageError:
            # The sender resent it in a new transaction: it is already accepted.
            log.info("message already stored", call_id=stored.call_id, aor=stored.aor)
            return MessagePlan(plan.kind, reject=(202, "Accepted")), None
        except MessageLimitError:
            metrics.MESSAGE_DELIVERIES.labels(result="rejected").inc()
            log.warning("message store full", aor=stored.aor, limit=self.settings.max_per_aor)
            return plan_message(plan.kind, devices, store_full=True), None
        except StoreError as exc:
            log.error("message store failed", aor=stored.aor, error=str(exc))
            fallback = plan_message(plan.kind, devices, store_full=True)
            if fallback.reject is not None:
                fallback = replace(fallback, reject=(500, "Message Store Unavailable"))
            return fallback, None
        self._spawn(self._update_gauge())
        return plan, stored

    def _device(self, binding: Binding) -> Device:
        """Online: a live flow, or no push token (a contact reachable as it is)."""
        flow = binding.flow
        live = flow.reliable and self.flow_alive(flow)
        pushable = self._pushable(binding)
        online = live or not flow.reliable or not pushable
        # A phone on UDP may sleep even though a datagram can be sent: push it too.
        return Device(binding.key, online=online, wake=pushable and not live)

    def _forward(self, inbound: _Inbound, device: str) -> None:
        binding = inbound.bindings[device]
        if inbound.stored is not None:
            marker = (inbound.stored.id, device)
            if marker in self._sending:
                return  # the device registered meanwhile: its delivery run sends it
            self._sending.add(marker)
        branch = _Branch(self, inbound, device)
        inbound.branches += 1
        try:
            request, destination = self._outgoing(inbound.request, binding, new_via=False)
            self.server.engine.send_request(request, destination, branch)
        except (TransactionError, TransportError, SipParseError, ValueError) as exc:
            log.info("message not forwarded", call_id=inbound.request.call_id, error=str(exc))
            self._branch_done(branch, None)

    def _outgoing(
        self, request: Request, binding: Binding, *, new_via: bool
    ) -> tuple[Request, Endpoint]:
        """The copy for `binding` (§16.6) and where it goes; raises ValueError when nowhere."""
        if self.identity is None:
            raise ValueError("no local address to send from")
        target = target_for_binding(binding, self.flow_alive(binding.flow))
        if target is None:
            raise ValueError(f"no route to {binding.contact}")
        if new_via:
            request = request.replace(headers=request.headers.remove("Via"))
        forwarded = forward_request(
            request, target, self.identity, branch=new_branch(request), record_route=False
        )
        return forwarded, target.destination

    def _branch_done(self, branch: _Branch, response: Response | None) -> None:
        if branch.done:
            return
        branch.done = True
        inbound = branch.inbound
        inbound.branches -= 1
        status = response.status if response is not None else None
        outcome = delivery_outcome(status)
        stored = inbound.stored
        if stored is not None:
            if outcome is DeliveryOutcome.RETRY:
                self._sending.discard((stored.id, branch.device))
                self._wake(inbound, branch.device)
            else:
                inbound.open_devices.discard(branch.device)
                self._spawn(self._record(stored, branch.device, outcome))
        if response is not None and 200 <= response.status < 300:
            self._answer(inbound, response_upstream(response))
            return
        # No answer: 480, not 408, which a proxy must not send for a non-INVITE (RFC 4320).
        upstream = response_upstream(response) if response is not None else None
        inbound.responses.append(upstream or self._reply(inbound, 480))
        self._check_answer(inbound)

    def _wake(self, inbound: _Inbound, device: str) -> None:
        if inbound.stored is None or device in inbound.pushed:
            return
        inbound.pushed.add(device)
        self._send_pushes(inbound.bindings[device], inbound.stored, inbound.request)

    def _check_answer(self, inbound: _Inbound) -> None:
        """Answer once nothing can change the outcome before the accept timeout."""
        if inbound.answered or inbound.branches:
            return
        if inbound.stored is not None and inbound.open_devices:
            return  # a device may still wake up and take it: wait for the timer
        self._answer(inbound, self._best(inbound))

    def _accept_timeout(self, inbound: _Inbound) -> None:
        inbound.timer = None
        if inbound.answered:
            return
        if inbound.stored is not None and inbound.open_devices:
            # RFC 3428: 202, accepted for later delivery (store-and-forward).
            self._answer(inbound, self._reply(inbound, 202))
        else:
            self._answer(inbound, self._best(inbound))

    def _best(self, inbound: _Inbound) -> Response:
        if inbound.responses:
            return best_response(inbound.request, inbound.responses)
        return self._reply(inbound, 480)

    def _reply(self, inbound: _Inbound, status: int, to_tag: str | None = None) -> Response:
        return make_response(
            inbound.request,
            status,
            to_tag=to_tag or new_tag(),
            headers=[("Server", self.server.user_agent)],
        )

    def _answer(self, inbound: _Inbound, response: Response) -> None:
        if inbound.answered:
            return
        inbound.answered = True
        if inbound.timer is not None:
            inbound.timer.cancel()
            inbound.timer = None
        self._unanswered.discard(inbound)
        if inbound.stored is not None:
            self._inbound.pop(inbound.stored.id, None)
        self.server.engine.respond(inbound.key, response)

    # --- pushes ----------------------------------------------------------------------

    def _pushable(self, binding: Binding) -> bool:
        """A token for alert / data pushes: an APNs remote token or an FCM token."""
        target = binding.push
        return (
            self.push is not None
            and target is not None
            and target.provider in ("apns", "fcm")
            and target.remote_token is not None
        )

    def _send_pushes(self, binding: Binding, stored: StoredMessage, request: Request) -> None:
        if self.push is None:
            return
        deadline = self.clock() + min(self.settings.delivery_timeout, PUSH_LIFETIME)
        pushes = push_requests_for(binding, request, deadline=deadline, kind=PushKind.MESSAGE)
        for push in pushes:
            # Whatever the provider answers, the store is not touched: the MESSAGE
            # waits for the device's next registration either way.
            self.push(replace(push, chat_room_addr=stored.chat_room_addr))
            log.info("message push", call_id=stored.call_id, aor=stored.aor, device=binding.key)

    # --- delivery on registration ----------------------------------------------------

    def on_registered(self, binding: Binding) -> None:
        """RegistrarService listener: send the device the MESSAGEs it has not taken."""
        device = (binding.aor, binding.key)
        if device not in self._runs and not self.messages.may_have_pending(binding.aor):
            return  # nothing stored for the AOR: a run would find nothing pending
        self._latest[device] = binding
        if device in self._runs:
            self._rerun.add(device)
            return
        self._runs.add(device)
        self._spawn(self._deliver_all(device), run=True)

    async def _deliver_all(self, device: tuple[str, str]) -> None:
        """One delivery run for a device: oldest first, one at a time."""
        aor, key = device
        try:
            while True:
                self._rerun.discard(device)
                try:
                    pending = await self.messages.pending(aor, key, self.clock())
                except StoreError as exc:
                    log.error("message store failed", aor=aor, error=str(exc))
                    return
                for stored in pending:
                    if (stored.id, key) in self._sending:
                        continue  # already on its way to this device
                    outcome = await self._deliver(self._latest[device], stored)
                    if outcome is DeliveryOutcome.RETRY:
                        break  # not reachable: the rest waits for the next registration
                if device not in self._rerun:
                    return
        finally:
            self._runs.discard(device)
            if device not in self._runs:
                self._latest.pop(device, None)

    async def _deliver(self, binding: Binding, stored: StoredMessage) -> DeliveryOutcome:
        """Send one stored MESSAGE to `binding` as a new request and wait for its answer."""
        try:
            original = with_date(stored.request(), stored.arrived_at)
            request, destination = self._outgoing(original, binding, new_via=True)
        except SipParseError as exc:
            log.error("stored message unreadable", call_id=stored.call_id, error=str(exc))
            await self._record(stored, binding.key, DeliveryOutcome.REFUSED)
            return DeliveryOutcome.REFUSED
        except ValueError as exc:
            log.info("stored message not sent", call_id=stored.call_id, error=str(exc))
            return DeliveryOutcome.RETRY
        answer: asyncio.Future[Response | None] = asyncio.get_running_loop().create_future()
        marker = (stored.id, binding.key)
        self._sending.add(marker)
        try:
            try:
                self.server.engine.send_request(request, destination, _Waiter(answer))
            except (TransactionError, TransportError, ValueError) as exc:
                log.info("stored message not sent", call_id=stored.call_id, error=str(exc))
                return DeliveryOutcome.RETRY
            response = await answer
            outcome = delivery_outcome(response.status if response is not None else None)
            log.info(
                "stored message sent",
                call_id=stored.call_id,
                aor=stored.aor,
                device=binding.key,
                status=response.status if response is not None else None,
            )
            if outcome is not DeliveryOutcome.RETRY:
                await self._record(stored, binding.key, outcome)
            inbound = self._inbound.get(stored.id)
            if inbound is not None and response is not None:
                self._delivered_late(inbound, binding.key, response, outcome)
            return outcome
        finally:
            self._sending.discard(marker)

    def _delivered_late(
        self, inbound: _Inbound, device: str, response: Response, outcome: DeliveryOutcome
    ) -> None:
        """A device that woke up answered while the sender still waits."""
        if outcome is DeliveryOutcome.RETRY:
            return
        inbound.open_devices.discard(device)
        if outcome is DeliveryOutcome.DELIVERED:
            self._answer(inbound, self._reply(inbound, response.status, response.to.tag))
            return
        inbound.responses.append(self._reply(inbound, response.status, response.to.tag))
        self._check_answer(inbound)

    async def _record(self, stored: StoredMessage, device: str, outcome: DeliveryOutcome) -> None:
        """A device is done with a stored MESSAGE: delivered, or refused for good."""
        marker = (stored.id, device)
        self._sending.add(marker)
        try:
            removed = await self.messages.mark_done(stored.id, device)
        except StoreError as exc:
            # It stays pending: the device may get it once more, never zero times.
            log.error("message store failed", call_id=stored.call_id, error=str(exc))
            return
        finally:
            self._sending.discard(marker)
        result = "delivered" if outcome is DeliveryOutcome.DELIVERED else "failed"
        metrics.MESSAGE_DELIVERIES.labels(result=result).inc()
        if removed:
            await self._update_gauge()

    # --- housekeeping ----------------------------------------------------------------

    async def _purge_loop(self, interval: float) -> None:
        while True:
            await self.purge()
            await asyncio.sleep(interval)

    async def purge(self) -> int:
        """Delete expired MESSAGEs; return how many."""
        try:
            purged = await self.messages.purge_expired(self.clock())
        except StoreError as exc:
            log.error("message store failed", error=str(exc))
            return 0
        if purged:
            metrics.MESSAGE_DELIVERIES.labels(result="expired").inc(purged)
            log.info("expired messages purged", count=purged)
        await self._update_gauge()
        return purged

    async def _update_gauge(self) -> None:
        with contextlib.suppress(StoreError):
            metrics.STORED_MESSAGES.set(await self.messages.total(self.clock()))
