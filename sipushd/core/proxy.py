"""Stateful proxy decisions (RFC 3261 §16) and the push requests of a held INVITE (RFC 8599).

Pure: no clock, no I/O. The runtime asks, in order:

- `find_loop` (§16.3 step 4): did this request pass through us with the same
  loop-relevant fields? Then 482.
- `strip_own_routes` (§16.4): we are a loose router; our own Route entries
  at the top are removed and give back the flow token we put in them.
- `target_for_binding` / `uri_destination`: where a branch goes.
- `forward_request` (§16.6): the copy sent on one branch — new Request-URI,
  Max-Forwards decremented, Path as Route set, Record-Route with a flow
  token, our Via with a fresh z9hG4bK branch whose first part is the loop hash.
- `stateless_branch` (§16.11): the branch of a CANCEL forwarded without state.
- `best_response` (§16.7 step 6), `response_upstream` (step 3), `build_cancel`
  (§9.1, with RFC 3326 Reason) for the response context.
- `push_requests_for` (RFC 8599 §5.6.2): the pushes that wake a binding;
  `refresh_due` / `refresh_push_for` (§5.5): binding-refresh pushes.

A flow token is `base64url(caller|callee endpoints).hmac`: it lets an
in-dialog request reach a phone over its own connection (RFC 5626 §5.3)
and cannot be forged to reach another flow.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sipushd.core.binding import Binding
from sipushd.core.payload import PushKind, PushRequest, PushService
from sipushd.sip import (
    Endpoint,
    Headers,
    Request,
    Response,
    SipParseError,
    SipUri,
    make_response,
    parse_uri,
)
from sipushd.sip.headers import parse_name_addr, split_list

__all__ = [
    "CALL_COMPLETED_ELSEWHERE",
    "DEFAULT_MAX_FORWARDS",
    "DEFAULT_PORTS",
    "REFRESH_LEAD",
    "DialogFlows",
    "ForwardTarget",
    "LocalAddress",
    "ProxyIdentity",
    "best_response",
    "bindings_matching",
    "build_cancel",
    "build_teardown",
    "caller_of",
    "decode_flow_token",
    "encode_flow_token",
    "find_loop",
    "forward_request",
    "is_chat_room_invite",
    "is_in_dialog",
    "loop_hash",
    "new_branch",
    "push_requests_for",
    "refresh_due",
    "refresh_push_for",
    "remove_top_via",
    "response_upstream",
    "same_endpoint",
    "stateless_branch",
    "strip_own_routes",
    "target_for_binding",
    "upstream_target",
    "uri_destination",
]

# RFC 3261 §16.6 step 3: a proxy adds Max-Forwards 70 when the request has none.
DEFAULT_MAX_FORWARDS = 70
DEFAULT_PORTS = {"udp": 5060, "tcp": 5060, "tls": 5061}
# RFC 3326 §2 / RFC 3261 §9.1: CANCEL of the branches that lost to a 2xx.
CALL_COMPLETED_ELSEWHERE = 'SIP;cause=200;text="Call completed elsewhere"'
MAGIC_COOKIE = "z9hG4bK"


@dataclass(frozen=True, slots=True)
class LocalAddress:
    """One address we are reachable at, as written in Via / Record-Route."""

    transport: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class ProxyIdentity:
    """Who "we" are: advertised addresses, host names meaning us, the flow-token key."""

    addresses: tuple[LocalAddress, ...]
    aliases: frozenset[str]
    secret: bytes

    def address_for(self, transport: str) -> LocalAddress:
        """The advertised address for `transport` (the first one when none matches)."""
        for address in self.addresses:
            if address.transport == transport:
                return address
        return self.addresses[0]

    def is_us(self, uri: SipUri) -> bool:
        """True when `uri` names this proxy (host alias and one of our ports, §16.4)."""
        if uri.host.lower().strip("[]") not in self.aliases:
            return False
        if uri.port is None:
            return any(DEFAULT_PORTS.get(a.transport) == a.port for a in self.addresses)
        return any(a.port == uri.port for a in self.addresses)

    def is_our_via(self, host: str, port: int | None, transport: str) -> bool:
        """True when a Via sent-by is ours."""
        if host.lower().strip("[]") not in self.aliases:
            return False
        want = port if port is not None else DEFAULT_PORTS.get(transport.lower(), 5060)
        return any(a.port == want for a in self.addresses)


@dataclass(frozen=True, slots=True)
class ForwardTarget:
    """One branch: the new Request-URI, the next hop, the Route set to push (Path)."""

    uri: SipUri
    destination: Endpoint
    routes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DialogFlows:
    """What a flow token carries: the caller's and the callee's endpoints."""

    caller: Endpoint
    callee: Endpoint


# --- §16.3 step 4 / §16.6 step 8: branches and loops -------------------------------------


def loop_hash(request: Request) -> str:
    """Hash of the fields a loop leaves unchanged (§16.6 step 8), 10 hex digits."""
    h = request.headers
    parts = [
        str(request.uri),
        request.from_.tag or "",
        request.to.tag or "",
        request.call_id,
        str(request.cseq.seq),
        *h.get_all("Proxy-Require"),
        *h.get_all("Proxy-Authorization"),
        *h.get_all("Route"),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]


def new_branch(request: Request) -> str:
    """A fresh RFC 3261 branch: magic cookie, loop hash, then random (unique per branch)."""
    return f"{MAGIC_COOKIE}{loop_hash(request)}.{secrets.token_hex(6)}"


def stateless_branch(request: Request) -> str:
    """§16.11: a branch computed from the received request alone, the same for its retransmissions.

    A CANCEL carries its INVITE's top Via branch, Request-URI, tags, Call-ID and CSeq
    number, so it gets the branch the INVITE got when forwarded statelessly: the next
    hop matches the two (§9.2). The loop hash comes first, as in `new_branch`.
    """
    top = request.top_via
    received = top.branch or ""
    if received.startswith(MAGIC_COOKIE):
        seed = received
    else:
        h = request
        seed = "\n".join(
            [str(top), h.to.tag or "", h.from_.tag or "", h.call_id, str(h.cseq.seq), str(h.uri)]
        )
    digest = hashlib.sha256(seed.encode()).hexdigest()[:12]
    return f"{MAGIC_COOKIE}{loop_hash(request)}.{digest}"


def find_loop(request: Request, identity: ProxyIdentity) -> bool:
    """§16.3 step 4: a Via of ours whose loop hash equals this request's means a loop (482)."""
    ours = [
        via
        for via in request.vias
        if identity.is_our_via(via.host, via.port, via.transport)
        and (via.branch or "").startswith(MAGIC_COOKIE)
    ]
    if not ours:
        return False
    wanted = loop_hash(request)
    return any((v.branch or "")[len(MAGIC_COOKIE) :].split(".")[0] == wanted for v in ours)


# --- flow tokens --------------------------------------------------------------------------


def _endpoint_text(endpoint: Endpoint) -> str:
    flow = "" if endpoint.flow is None else str(endpoint.flow)
    return f"{endpoint.transport}/{endpoint.host}/{endpoint.port}/{flow}"


def _endpoint_parse(text: str) -> Endpoint:
    transport, host, port, flow = text.split("/")
    return Endpoint(transport, host, int(port), int(flow) if flow else None)


def encode_flow_token(flows: DialogFlows, secret: bytes) -> str:
    """A URI-safe token naming both ends of a dialog, signed with `secret`."""
    raw = f"{_endpoint_text(flows.caller)}|{_endpoint_text(flows.callee)}".encode()
    body = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    mac = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()[:12]
    return f"{body}.{mac}"


def decode_flow_token(token: str, secret: bytes) -> DialogFlows | None:
    """The endpoints of a token we made; None for a forged or foreign one."""
    body, dot, mac = token.rpartition(".")
    if not dot:
        return None
    expected = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()[:12]
    if not hmac.compare_digest(expected, mac):
        return None
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        caller, callee = raw.split("|")
        return DialogFlows(_endpoint_parse(caller), _endpoint_parse(callee))
    except (ValueError, UnicodeDecodeError):
        return None


def same_endpoint(a: Endpoint, b: Endpoint) -> bool:
    """True when `a` and `b` are the same flow (stream) or the same address (datagram)."""
    if a.transport != b.transport:
        return False
    if a.flow is not None and b.flow is not None:
        return a.flow == b.flow
    return (a.host, a.port) == (b.host, b.port)


# --- §16.4 route information preprocessing ------------------------------------------------


def strip_own_routes(
    request: Request, identity: ProxyIdentity
) -> tuple[Request, DialogFlows | None]:
    """Remove our Route entries at the top (§16.4); return the request and their flow token."""
    values = request.headers.values("Route")
    flows: DialogFlows | None = None
    removed = 0
    for value in values:
        try:
            route = parse_name_addr(value)
        except SipParseError:
            break
        if not identity.is_us(route.uri):
            break
        removed += 1
        if flows is None and route.uri.user:
            flows = decode_flow_token(route.uri.user, identity.secret)
    if not removed:
        return request, None
    headers = request.headers.remove("Route")
    items = list(headers)
    rest = values[removed:]
    if rest:
        # Keep the remaining Route values where the first Route field was.
        position = _first_index(request.headers, "Route")
        items[position:position] = [("Route", v) for v in rest]
    return request.replace(headers=Headers(items)), flows


def _first_index(headers: Headers, name: str) -> int:
    count = 0
    for key, _ in headers:
        if key.lower() == name.lower():
            return count
        count += 1
    return count


def is_in_dialog(request: Request) -> bool:
    """A request inside a dialog carries a To tag (§12.2)."""
    return request.to.tag is not None


# --- targets ------------------------------------------------------------------------------


def _ip_literal(host: str) -> str | None:
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare).compressed
    except ValueError:
        return None


def uri_destination(uri: SipUri) -> Endpoint | None:
    """The next hop for a URI whose host is an IP literal (§19.1; no DNS here), else None."""
    host = _ip_literal(uri.host)
    if host is None:
        return None
    maddr = uri.param("maddr")
    if maddr and (literal := _ip_literal(maddr)) is not None:
        host = literal
    transport = uri.transport
    port = uri.port if uri.port is not None else DEFAULT_PORTS.get(transport, 5060)
    return Endpoint(transport, host, port)


def upstream_target(
    request: Request, upstream: SipUri, hop: Endpoint | None = None
) -> ForwardTarget | None:
    """A branch to `routing.upstream`, loose-routed through it.

    `hop` is the upstream's address as resolved by the runtime (RFC 3263); without it only
    an IP-literal upstream has one, and None says there is nowhere to send the request.
    """
    hop = hop or uri_destination(upstream)
    if hop is None:
        return None
    return ForwardTarget(request.uri, hop, (f"<{upstream.with_param('lr')}>",))


def target_for_binding(binding: Binding, flow_alive: bool) -> ForwardTarget | None:
    """Where a branch to `binding` goes: its Path, its live flow, its Contact (NAT: source)."""
    uri = parse_uri(binding.contact)
    if binding.path:
        # RFC 3327 §5.3: the Path becomes the Route set, the first entry the next hop.
        first = parse_name_addr(binding.path[0]).uri
        hop = uri_destination(first)
        return None if hop is None else ForwardTarget(uri, hop, binding.path)
    flow = binding.flow
    if flow.reliable and flow_alive:
        # RFC 5626 §5.3: reuse the registration's connection.
        return ForwardTarget(uri, flow)
    hop = uri_destination(uri)
    if not flow.reliable and (binding.reg_id is not None or hop is None or _behind_nat(hop, flow)):
        # Over UDP the REGISTER's source address: RFC 5626 outbound, or a Contact that
        # names a private address other than the one the REGISTER came from (NAT).
        return ForwardTarget(uri, flow)
    return None if hop is None else ForwardTarget(uri, hop)


def _behind_nat(contact: Endpoint, source: Endpoint) -> bool:
    try:
        private = ipaddress.ip_address(contact.host).is_private
    except ValueError:
        return False
    return private and contact.host != source.host


# --- §16.6 request forwarding -------------------------------------------------------------


def _record_route(identity: ProxyIdentity, transport: str, token: str) -> str:
    address = identity.address_for(transport)
    host = f"[{address.host}]" if ":" in address.host else address.host
    params = "" if transport == "udp" else f";transport={transport}"
    return f"<sip:{token}@{host}:{address.port}{params};lr>"


def forward_request(
    request: Request,
    target: ForwardTarget,
    identity: ProxyIdentity,
    *,
    branch: str,
    source: Endpoint | None = None,
    record_route: bool = True,
) -> Request:
    """The copy of `request` sent on one branch (§16.6 steps 1-8)."""
    headers = request.headers
    # Step 3: Max-Forwards.
    max_forwards = request.max_forwards
    value = DEFAULT_MAX_FORWARDS if max_forwards is None else max(0, max_forwards - 1)
    headers = headers.set("Max-Forwards", str(value))
    # Step 4: Record-Route, so in-dialog requests come back through us over the flows.
    if record_route and source is not None:
        token = encode_flow_token(DialogFlows(source, target.destination), identity.secret)
        rr = [_record_route(identity, target.destination.transport, token)]
        if source.transport != target.destination.transport:
            # RFC 5658: one entry per side when the two sides use different transports.
            rr.append(_record_route(identity, source.transport, token))
        for value_ in reversed(rr):
            headers = headers.prepend("Record-Route", value_)
    # Step 6 with RFC 3327: the Path is pushed as the Route set.
    if target.routes:
        existing = headers.values("Route")
        headers = headers.remove("Route")
        for route in reversed([*target.routes, *existing]):
            headers = headers.prepend("Route", route)
    # Step 8: our Via, on top.
    address = identity.address_for(target.destination.transport)
    host = f"[{address.host}]" if ":" in address.host else address.host
    sent_by = f"{host}:{address.port}"
    via = f"SIP/2.0/{target.destination.transport.upper()} {sent_by};branch={branch};rport"
    headers = headers.prepend("Via", via)
    return request.replace(uri=target.uri, headers=headers)


def build_cancel(forwarded: Request, reason: str | None = None) -> Request:
    """The CANCEL of a forwarded INVITE (§9.1), with a Reason (RFC 3326) when given."""
    h = forwarded.headers
    items = [("Via", h.values("Via")[0])]
    items += [(name, h.get(name) or "") for name in ("From", "To", "Call-ID")]
    items.append(("CSeq", f"{forwarded.cseq.seq} CANCEL"))
    items.append(("Max-Forwards", str(DEFAULT_MAX_FORWARDS)))
    items += [("Route", v) for v in h.get_all("Route")]
    if reason:
        items.append(("Reason", reason))
    return Request("CANCEL", forwarded.uri, Headers(items))


def build_teardown(forwarded: Request, response: Response) -> tuple[Request, Request]:
    """ACK and BYE for a 2xx nobody can take any more (the caller already has its answer).

    The proxy acts as the UAC of that dialog (§13.2.2.4, §15.1.1) so the phone does
    not keep ringing into a call that no longer exists.
    """
    try:
        target = response.contacts[0].uri if response.contacts else forwarded.uri
    except SipParseError:
        target = forwarded.uri
    top = forwarded.top_via
    seq = forwarded.cseq.seq
    common = [
        ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
        ("From", forwarded.headers.get("From") or ""),
        ("To", response.headers.get("To") or ""),
        ("Call-ID", forwarded.call_id),
    ]

    def request(method: str, cseq: int, extra: list[tuple[str, str]]) -> Request:
        via = top.with_param("branch", new_branch(forwarded))
        items = [("Via", str(via)), *common, ("CSeq", f"{cseq} {method}"), *extra]
        return Request(method, target, Headers(items))

    reason = [("Reason", 'SIP;cause=487;text="Call already ended"')]
    return request("ACK", seq, []), request("BYE", seq + 1, reason)


# --- §16.7 response processing ------------------------------------------------------------


def remove_top_via(headers: Headers) -> Headers:
    """`headers` without the first Via value (§16.7 step 3)."""
    items = list(headers)
    for index, (name, value) in enumerate(items):
        if name.lower() != "via":
            continue
        rest = split_list(value, strict=False)[1:]
        if rest:
            items[index] = (name, ", ".join(rest))
        else:
            del items[index]
        break
    return Headers(items)


def response_upstream(response: Response) -> Response:
    """A branch's response as forwarded to the caller: our Via removed (§16.7 step 3, 9)."""
    return response.replace(headers=remove_top_via(response.headers))


def _rank(status: int) -> tuple[int, int]:
    # §16.7 step 6: 6xx first, then the lowest class; 5xx only if nothing better.
    if status >= 600:
        return (0, status)
    return (status // 100, status)


def best_response(request: Request, responses: Sequence[Response]) -> Response:
    """The final response the caller gets when no branch answered 2xx (§16.7 step 6)."""
    finals = [r for r in responses if r.status >= 300]
    if not finals:
        return make_response(request, 408)
    best = min(finals, key=lambda r: _rank(r.status))
    if best.status == 503:
        # §16.7 step 6: a 503 would make the caller think *we* are overloaded.
        return best.replace(status=500, reason="Server Internal Error")
    if best.status == 430:
        # RFC 5626 §11: 430 Flow Failed is meant for proxies; to a UA the callee is away.
        return best.replace(status=480, reason="Temporarily Unavailable")
    if best.status in (401, 407):
        # §16.7 step 7: the caller gets every challenge of every branch.
        headers = best.headers.remove("WWW-Authenticate").remove("Proxy-Authenticate")
        for other in finals:
            if other.status in (401, 407):
                for name in ("WWW-Authenticate", "Proxy-Authenticate"):
                    for value in other.headers.get_all(name):
                        headers = headers.add(name, value)
        return best.replace(headers=headers)
    return best


# --- RFC 8599 §5.6.2: pushes for a held INVITE --------------------------------------------


def is_chat_room_invite(request: Request) -> bool:
    """An INVITE from a conference focus without SDP: a chat-room invitation, not a call."""
    if request.method != "INVITE":
        return False
    try:
        focus = any(c.has_param("isfocus") or c.uri.has_param("isfocus") for c in request.contacts)
    except SipParseError:
        return False
    content_type = (request.content_type or "").split(";")[0].strip().lower()
    return focus and content_type != "application/sdp"


def caller_of(request: Request) -> tuple[str, str]:
    """(URI, display name) of the caller, from From."""
    sender = request.from_
    return str(sender.uri), sender.display_name or ""


def push_requests_for(
    binding: Binding, request: Request, *, deadline: float, kind: PushKind = PushKind.CALL
) -> list[PushRequest]:
    """The push that wakes `binding` for `request`; empty when it cannot be pushed to.

    VoIP pushes are for calls only (iOS kills an app that does not report one as a
    call), so a chat-room invitation or a missed call uses the remote token.
    """
    target = binding.push
    if target is None or target.provider not in ("apns", "fcm"):
        return []
    chat_room = is_chat_room_invite(request)
    service = PushService.REMOTE
    token = target.remote_token
    voip = target.voip_token
    if target.provider == "apns" and kind is PushKind.CALL and not chat_room and voip:
        service, token = PushService.VOIP, voip
    if token is None:
        return []
    uri, display = caller_of(request)
    return [
        PushRequest(
            kind=PushKind.MESSAGE if chat_room and kind is PushKind.CALL else kind,
            provider=target.provider,
            token=token,
            app_id=target.app_id,
            deadline=deadline,
            team_id=target.team_id,
            service=service,
            sandbox=target.sandbox,
            caller_uri=uri,
            caller_display=display,
            call_id=request.call_id,
            chat_room_addr=uri if chat_room else None,
            instance=binding.gr or "",
        )
    ]


# RFC 8599 §5.5: how long before expiry a device that cannot refresh on its own is woken.
REFRESH_LEAD = 150.0


def refresh_due(binding: Binding, now: float, lead: float = REFRESH_LEAD) -> bool:
    """True when `binding` needs a binding-refresh push now (RFC 8599 §5.5).

    Only for push bindings whose UA did not say it refreshes by itself (`+sip.pnsreg`),
    within `lead` seconds of expiry (half the lifetime for short registrations), and
    never once expired.
    """
    if binding.push is None or binding.pnsreg or binding.expired(now):
        return False
    window = min(lead, (binding.expires_at - binding.updated_at) / 2)
    return binding.expires_at - now <= window


def refresh_push_for(binding: Binding) -> PushRequest | None:
    """The background (APNs) / data (FCM) push that makes the app re-register."""
    target = binding.push
    if target is None or target.provider not in ("apns", "fcm"):
        return None
    token = target.remote_token
    if token is None:
        return None  # a VoIP token may only carry calls (PUSH-PROTOCOLS.md)
    return PushRequest(
        kind=PushKind.REFRESH,
        provider=target.provider,
        token=token,
        app_id=target.app_id,
        deadline=binding.expires_at,
        team_id=target.team_id,
        sandbox=target.sandbox,
        instance=binding.gr or "",
    )


def bindings_matching(registered: Binding, held: Iterable[Binding]) -> list[Binding]:
    """Held bindings the newly `registered` one stands for: same instance or same token."""
    out = []
    for binding in held:
        same_instance = binding.instance is not None and binding.instance == registered.instance
        if binding.key == registered.key or same_instance or binding.tokens & registered.tokens:
            out.append(binding)
    return out
