"""The stateful proxy (RFC 3261 §16) with push-and-hold for INVITE (RFC 8599 §5.6.2).

`ProxyCore` is the handler the server core calls for INVITE and for every
request that is not addressed to the server itself:

- Requests for a served domain go to the AOR's bindings (a GRUU to its one
  instance), forked in parallel. A binding with push parameters gets a push
  (`push.mode: always`: at once; `unreachable`: when its flow is gone or no
  provisional answer came within `push.delay`); the INVITE is held and forked
  to the phone as soon as it registers again, once per device (runtime/wakeup.py).
- Other targets go to `routing.upstream`, only for local users (407 when
  authentication is on); never an open relay (403).
- A request another node routed through our own Path entry (shared store,
  runtime/cluster.py) goes over the phone's flow it names.
- In-dialog requests and ACKs for 2xx follow our Record-Route flow token back
  over the phone's own connection; stray 2xx retransmissions are forwarded
  statelessly (§16.7 step 3, §16.11).
- Caller CANCEL (§16.10): 200, CANCEL the branches, 487. Phones woken by an
  alert / data push get a missed-call push; phones woken by a VoIP push get
  the INVITE and then a CANCEL when they register, so CallKit shows the call.
  A CANCEL that matches no transaction is forwarded statelessly (§16.10,
  §16.11; runtime/stateless.py) where its INVITE would have gone.

Only this module reads the clock for the proxy: `clock` (UNIX time) for push
deadlines, handed to the `CallWaker` as `now`; timers run on the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection, Coroutine
from dataclasses import dataclass
from typing import Protocol

import structlog

from sipushd.core.binding import Binding
from sipushd.core.cluster import ClusterPaths
from sipushd.core.proxy import (
    DialogFlows,
    ForwardTarget,
    ProxyIdentity,
    find_loop,
    forward_request,
    is_in_dialog,
    new_branch,
    response_upstream,
    same_endpoint,
    strip_own_routes,
    target_for_binding,
    upstream_target,
    uri_destination,
)
from sipushd.runtime.authgate import AuthGate
from sipushd.runtime.cluster import relay_to_flow
from sipushd.runtime.engine import Engine
from sipushd.runtime.forking import Branch, ForwardContext
from sipushd.runtime.held import device_id
from sipushd.runtime.server import ServerCore
from sipushd.runtime.stateless import CancelRelay
from sipushd.runtime.wakeup import CallWaker, PushSender
from sipushd.sip import Endpoint, Request, Response, SipParseError, SipUri, make_response
from sipushd.sip.transaction import TransactionError, TransactionKey
from sipushd.store.base import BindingStore, StoreError
from sipushd.transport import TransportError
from sipushd.transport.routing import response_destination

__all__ = ["Network", "ProxyCore", "ProxySettings", "PushSender"]

log = structlog.get_logger("sipushd.proxy")


class Network(Protocol):
    """What the proxy needs of the transport."""

    def flow_alive(self, endpoint: Endpoint) -> bool:
        """True while the connection named by endpoint.flow accepts output."""
        ...

    def send(self, message: Request | Response, destination: Endpoint) -> Endpoint:
        """Send without a transaction (stateless forwarding)."""
        ...


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """Routing and push settings (DESIGN.md, `routing` and `push` sections)."""

    domains: frozenset[str]
    call_timeout: float = 90.0
    push_sent_response: bool = True
    push_mode: str = "always"
    push_delay: float = 2.0
    upstream: SipUri | None = None
    # The upstream's address when its host is a name (resolved at start and on SIGHUP).
    upstream_hop: Endpoint | None = None
    # push.call_remote_push_interval: ring iOS alert-push devices again (None: once).
    call_remote_push_interval: float | None = None
    # §16.6 step 11: how long an INVITE branch may ring without a final answer (> 3 min).
    timer_c: float | None = 181.0


class ProxyCore:
    """Routes, forks and holds requests; see the module docstring."""

    def __init__(
        self,
        server: ServerCore,
        store: BindingStore,
        network: Network,
        pushes: PushSender,
        identity: ProxyIdentity,
        settings: ProxySettings,
        *,
        auth: AuthGate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.server = server
        self.engine: Engine = server.engine
        self.store = store
        self.network = network
        self.identity = identity
        self.settings = settings
        self.auth = auth
        self.clock = clock
        self._loop = asyncio.get_running_loop()
        self._contexts: dict[TransactionKey, ForwardContext] = {}
        self._waker = CallWaker(self.engine, pushes, self.fork_to, network.flow_alive)
        self._tasks: set[asyncio.Task[None]] = set()
        # (aor, key) -> the flow a binding registered on; persistent stores forget
        # flow ids (they name connections of this process only), the proxy does not.
        self._flows: dict[tuple[str, str], Endpoint] = {}
        self._cancels = CancelRelay(self.engine, network, identity, self.engine.layer.config)
        # Our Path entries in a shared store (None: one node, no entries to recognise).
        self.paths: ClusterPaths | None = None

    def attach(self) -> None:
        """Install the proxy's hooks in the server core."""
        server = self.server
        server.handlers["INVITE"] = self.handle
        server.forward_handler = self.handle
        server.cancel_handler = self.on_cancel
        server.ack_handler = self.on_ack
        server.stray_response_handler = self.on_stray_response

    @property
    def pushes(self) -> PushSender:
        """The push dispatcher (SIGHUP replaces it)."""
        return self._waker.pushes

    @pushes.setter
    def pushes(self, pushes: PushSender) -> None:
        self._waker.pushes = pushes

    @property
    def held_calls(self) -> int:
        """INVITEs currently held for a waking phone."""
        return self._waker.held_calls

    def held(self) -> list[dict[str, object]]:
        """The held INVITEs and their pushed devices (for the admin API)."""
        return self._waker.held()

    # --- requests --------------------------------------------------------------------

    def handle(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        """Server handler: route one request (§16.3-§16.5)."""
        if find_loop(request, self.identity):
            self.server.reply(key, request, 482)
            return
        if self.paths is not None and (hop := self.paths.hop(request)) is not None:
            # A peer node forks to a phone whose flow is ours (RFC 3327 §5.3, RFC 5626 §5.3).
            context = self._context(hop.request, source, key)
            relay_to_flow(context, hop.flow, self.identity, self.network.flow_alive)
            return
        request, flows = strip_own_routes(request, self.identity)
        try:
            if is_in_dialog(request):
                self._in_dialog(request, source, key, flows)
            elif self.is_local(request.uri) and not request.routes:
                if self._authorised(request, source, key, local_target=True):
                    # The context exists at once, so a CANCEL during the lookup finds it.
                    self._spawn(self._to_local(self._context(request, source, key)))
            elif self._authorised(request, source, key, local_target=False):
                self._to_upstream(request, source, key)
        except SipParseError as exc:
            self.server.reply(key, request, 400, f"Bad Request ({exc})"[:100])

    def is_local(self, uri: SipUri) -> bool:
        """True for a URI of a served domain (the location service decides, §16.5)."""
        return uri.host.lower() in self.settings.domains

    def _authorised(
        self, request: Request, source: Endpoint, key: TransactionKey, *, local_target: bool
    ) -> bool:
        from_local = request.from_.uri.host.lower() in self.settings.domains
        if local_target and not (from_local and request.method == "INVITE"):
            return True  # anyone may call a local user; local callers prove who they are
        if not from_local:
            self.server.reply(key, request, 403, "Relaying Denied")
            return False
        if self.auth is None:
            return True
        verdict = self.auth.check(request, source, proxy=True)
        if not verdict.passed:
            self.server.reply(key, request, verdict.status, verdict.reason, verdict.headers)
            return False
        if verdict.username is not None and verdict.username != request.from_.uri.user:
            self.server.reply(key, request, 403, "From Is Not Your Address")
            return False
        return True

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _to_local(self, context: ForwardContext) -> None:
        request = context.request
        if request.uri.user is None:
            context.finish(context.reply(404))
            return
        try:
            bindings = await self.bindings_for(request.uri)
        except StoreError as exc:
            log.error("binding store failed", error=str(exc), call_id=request.call_id)
            context.finish(context.reply(500))
            return
        if context.finished:
            return  # cancelled while the store answered
        if not bindings:
            # RFC 8599 / §16.5: a known domain, nobody registered.
            context.finish(context.reply(480))
            return
        if request.method == "INVITE":
            self._waker.start(context, request.uri.aor, bindings, self.settings, self.clock())
        else:
            self.fork_to_bindings(context, bindings)

    async def bindings_for(self, uri: SipUri) -> list[Binding]:
        """The live bindings a local Request-URI names (a GRUU names one instance)."""
        now = self.clock()
        if uri.has_param("gr"):
            found = await self.store.by_gruu(str(uri), now)
            bindings = [found] if found is not None else []
        else:
            bindings = await self.store.get(uri.aor, now)
        return [self._with_flow(b) for b in bindings]

    def _with_flow(self, binding: Binding) -> Binding:
        """`binding` with the flow id it registered on, while that connection lives."""
        known = self._flows.get((binding.aor, binding.key))
        flow = binding.flow
        if known is None or flow.flow is not None:
            return binding
        if not self.network.flow_alive(known):
            del self._flows[(binding.aor, binding.key)]
            return binding
        if (known.transport, known.host, known.port) != (flow.transport, flow.host, flow.port):
            return binding
        return binding.replace(flow=known)

    def _context(self, request: Request, source: Endpoint, key: TransactionKey) -> ForwardContext:
        context = ForwardContext(
            self.engine,
            request,
            source,
            key,
            on_finished=self._context_finished,
            timer_c=self.settings.timer_c,
        )
        self._contexts[key] = context
        return context

    def _context_finished(self, context: ForwardContext) -> None:
        self._contexts.pop(context.key, None)
        self._waker.on_finished(context)

    def fork_to_bindings(self, context: ForwardContext, bindings: Collection[Binding]) -> None:
        """Fork a non-INVITE request to every binding reachable now (no push)."""
        with context.forking():
            for binding in bindings:
                alive = self.network.flow_alive(binding.flow)
                if binding.push is None or alive or not binding.flow.reliable:
                    self.fork_to(context, binding)

    def fork_to(
        self, context: ForwardContext, binding: Binding, label: str | None = None
    ) -> Branch | None:
        """Fork `context`'s request to one binding (§16.6); None when it cannot be reached."""
        target = target_for_binding(binding, self.network.flow_alive(binding.flow))
        if target is None:
            return None
        request = context.request
        forwarded = forward_request(
            request,
            target,
            self.identity,
            branch=new_branch(request),
            source=context.source,
            record_route=request.method in ("INVITE", "SUBSCRIBE", "REFER"),
        )
        log.debug(
            "forking",
            call_id=request.call_id,
            method=request.method,
            to=binding.contact,
            via=f"{target.destination.transport}:{target.destination.host}:"
            f"{target.destination.port}/{target.destination.flow}",
        )
        return context.fork(forwarded, target.destination, label or device_id(binding))

    def _to_upstream(self, request: Request, source: Endpoint, key: TransactionKey) -> None:
        upstream = self.settings.upstream
        if upstream is None:
            self.server.reply(key, request, 403, "Relaying Denied")
            return
        target = upstream_target(request, upstream, self.settings.upstream_hop)
        if target is None:
            log.warning("upstream has no address", upstream=str(upstream))
            self.server.reply(key, request, 502, "Upstream Not Resolvable")
            return
        request = request.replace(headers=request.headers.remove("Proxy-Authorization"))
        context = self._context(request, source, key)
        forwarded = forward_request(
            request,
            target,
            self.identity,
            branch=new_branch(request),
            source=source,
            record_route=request.method == "INVITE",
        )
        context.fork(forwarded, target.destination)

    def on_registered(self, binding: Binding) -> None:
        """Registrar listener: a device registered; fork held INVITEs to it (once)."""
        if binding.flow.flow is not None:
            self._flows[(binding.aor, binding.key)] = binding.flow
        self._waker.on_registered(binding)

    # --- CANCEL, in-dialog, ACK, stray responses -------------------------------------

    def on_cancel(
        self,
        cancel: Request,
        source: Endpoint,
        key: TransactionKey,
        invite_key: TransactionKey | None,
    ) -> None:
        """§16.10: 200 to the CANCEL, CANCEL every pending branch, 487 to the caller."""
        context = self._contexts.get(invite_key) if invite_key is not None else None
        if invite_key is None:
            self._forward_stray_cancel(cancel, source, key)
            return
        self.server.reply(key, cancel, 200)
        if context is None:
            # §9.2: an INVITE we answered ourselves, or already final.
            self.engine.respond(invite_key, make_response(cancel.replace(method="INVITE"), 487))
            return
        reason = cancel.headers.get("Reason")
        context.cancel_reason = reason
        self._waker.on_cancelled(invite_key)
        context.cancel_all(reason)
        context.finish(context.reply(487))

    def _forward_stray_cancel(self, cancel: Request, source: Endpoint, key: TransactionKey) -> None:
        """§16.10: no response context: forward statelessly where the INVITE would go."""
        try:
            if find_loop(cancel, self.identity):
                self.server.reply(key, cancel, 482)
                return
            stripped, flows = strip_own_routes(cancel, self.identity)
            target: ForwardTarget | None = None
            if is_in_dialog(stripped):
                hop = self._dialog_destination(stripped, source, flows)
                target = None if hop is None else ForwardTarget(stripped.uri, hop)
            elif self.is_local(stripped.uri) and not stripped.routes:
                self._spawn(self._stray_cancel_to_local(cancel, key, stripped))
                return
            elif (
                stripped.from_.uri.host.lower() in self.settings.domains and self.settings.upstream
            ):
                # Its INVITE went upstream; from elsewhere it was refused (never an open relay).
                target = upstream_target(
                    stripped, self.settings.upstream, self.settings.upstream_hop
                )
        except SipParseError as exc:
            self.server.reply(key, cancel, 400, f"Bad Request ({exc})"[:100])
            return
        self._cancels.forward(cancel, key, stripped, target)

    async def _stray_cancel_to_local(
        self, cancel: Request, key: TransactionKey, stripped: Request
    ) -> None:
        """§16.11: a stateless proxy picks one target: the first reachable binding."""
        target = None
        try:
            for binding in await self.bindings_for(stripped.uri):
                target = target_for_binding(binding, self.network.flow_alive(binding.flow))
                if target is not None:
                    break
        except (StoreError, SipParseError) as exc:
            log.info("CANCEL target lookup failed", error=str(exc), call_id=cancel.call_id)
        self._cancels.forward(cancel, key, stripped, target)

    def _in_dialog(
        self, request: Request, source: Endpoint, key: TransactionKey, flows: DialogFlows | None
    ) -> None:
        destination = self._dialog_destination(request, source, flows)
        if destination is None:
            if self.is_local(request.uri) and not request.routes:
                # A GRUU remote target (Linphone's Contact) whose flow token did not
                # help: ask the location service (RFC 5627 §5.3).
                self._spawn(self._to_local(self._context(request, source, key)))
            else:
                self.server.reply(key, request, 404, "No Route To Target")
            return
        context = self._context(request, source, key)
        forwarded = forward_request(
            request,
            ForwardTarget(request.uri, destination),
            self.identity,
            branch=new_branch(request),
            record_route=False,
        )
        context.fork(forwarded, destination)

    def _dialog_destination(
        self, request: Request, source: Endpoint, flows: DialogFlows | None
    ) -> Endpoint | None:
        """The other end of the dialog over its own flow, else the next Route / target."""
        if flows is not None:
            other = None
            if same_endpoint(source, flows.caller):
                other = flows.callee
            elif same_endpoint(source, flows.callee):
                other = flows.caller
            if other is not None and (not other.reliable or self.network.flow_alive(other)):
                return other
        routes = request.routes
        return uri_destination(routes[0].uri if routes else request.uri)

    def on_ack(self, ack: Request, source: Endpoint) -> None:
        """An ACK for a 2xx: end to end, forwarded statelessly along the route (§16.6)."""
        try:
            if find_loop(ack, self.identity):
                return
            ack, flows = strip_own_routes(ack, self.identity)
            destination = self._dialog_destination(ack, source, flows)
            if destination is None:
                return
            forwarded = forward_request(
                ack,
                ForwardTarget(ack.uri, destination),
                self.identity,
                branch=new_branch(ack),
                record_route=False,
            )
            self.engine.send_request(forwarded, destination, None)
        except (SipParseError, TransactionError, TransportError, ValueError) as exc:
            log.info("ACK not forwarded", error=str(exc))

    def on_stray_response(self, response: Response, source: Endpoint) -> None:
        """A 2xx or a CANCEL's answer with no transaction left: forward it (§16.7, §16.11)."""
        try:
            if self._cancels.answer(response):
                return
            vias = response.vias
            method = response.cseq.method
            if not ((200 <= response.status < 300 and method == "INVITE") or method == "CANCEL"):
                return
            top = vias[0]
            if len(vias) < 2 or not self.identity.is_our_via(top.host, top.port, top.transport):
                return
            upstream = response_upstream(response)
            self.network.send(upstream, response_destination(upstream))
        except (SipParseError, TransportError, OSError, ValueError) as exc:
            log.info("stray response dropped", error=str(exc))

    async def close(self) -> None:
        """Stop timers and wait for requests in progress."""
        self._waker.stop_timers()
        for context in list(self._contexts.values()):
            context.stop_timers()
        self._cancels.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
