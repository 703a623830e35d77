"""Proxy decisions without an event loop: §16.3 loops, §16.4 routes, §16.6 forwarding, §16.7."""

from __future__ import annotations

import pytest

from sipushd.core.binding import Binding
from sipushd.core.payload import PushKind, PushService
from sipushd.core.proxy import (
    CALL_COMPLETED_ELSEWHERE,
    DialogFlows,
    ForwardTarget,
    LocalAddress,
    ProxyIdentity,
    best_response,
    bindings_matching,
    build_cancel,
    decode_flow_token,
    encode_flow_token,
    find_loop,
    forward_request,
    is_chat_room_invite,
    new_branch,
    push_requests_for,
    remove_top_via,
    response_upstream,
    same_endpoint,
    stateless_branch,
    strip_own_routes,
    target_for_binding,
    uri_destination,
)
from sipushd.core.pushparams import PushTarget
from sipushd.sip import (
    Endpoint,
    Headers,
    Request,
    Response,
    make_response,
    parse_message,
    parse_uri,
)

SECRET = b"k" * 32
US = ProxyIdentity(
    addresses=(LocalAddress("udp", "10.0.0.1", 5060), LocalAddress("tcp", "10.0.0.1", 5060)),
    aliases=frozenset({"10.0.0.1", "sip.example.org"}),
    secret=SECRET,
)
CALLER = Endpoint("udp", "192.0.2.7", 5062)
PHONE = Endpoint("tcp", "198.51.100.9", 40123, flow=17)


def invite(extra: str = "", body: str = "") -> Request:
    text = (
        "INVITE sip:bob@example.org SIP/2.0\r\n"
        "Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKcaller1;rport\r\n"
        "Max-Forwards: 70\r\n"
        'From: "Alice" <sip:alice@example.org>;tag=a1\r\n'
        "To: <sip:bob@example.org>\r\n"
        "Call-ID: call-1@192.0.2.7\r\n"
        "CSeq: 1 INVITE\r\n"
        "Contact: <sip:alice@192.0.2.7:5062>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    )
    message = parse_message(text.encode())
    assert isinstance(message, Request)
    return message


def binding(**changes: object) -> Binding:
    values: dict[str, object] = {
        "aor": "sip:bob@example.org",
        "key": "<urn:uuid:00000000-0000-0000-0000-000000000001>",
        "contact": "sip:bob@198.51.100.9:40123;transport=tcp",
        "expires_at": 4000.0,
        "call_id": "reg-1",
        "cseq": 1,
        "flow": PHONE,
        "registered_at": 100.0,
        "updated_at": 100.0,
        "instance": "<urn:uuid:00000000-0000-0000-0000-000000000001>",
    }
    values.update(changes)
    return Binding(**values)  # type: ignore[arg-type]


APNS = PushTarget("apns", True, "org.example.app", "TEAM1", (("voip", "aa11"), ("remote", "bb22")))


def test_forwarded_request_has_our_via_decremented_max_forwards_and_record_route() -> None:
    target = ForwardTarget(
        uri=parse_uri("sip:bob@198.51.100.9:40123;transport=tcp"), destination=PHONE
    )
    branch = new_branch(invite())
    out = forward_request(invite(), target, US, branch=branch, source=CALLER)
    assert str(out.uri) == "sip:bob@198.51.100.9:40123;transport=tcp"
    assert out.max_forwards == 69
    assert out.top_via.branch == branch and branch.startswith("z9hG4bK")
    assert out.top_via.transport == "TCP" and out.top_via.host == "10.0.0.1"
    assert len(out.vias) == 2
    rr = out.record_routes
    # Different transports on the two sides: two entries (RFC 5658), same token.
    assert len(rr) == 2
    assert rr[0].uri.transport == "tcp" and rr[1].uri.transport == "udp"
    assert rr[0].uri.has_param("lr")
    flows = decode_flow_token(rr[0].uri.user or "", SECRET)
    assert flows == DialogFlows(CALLER, PHONE)


def test_missing_max_forwards_becomes_70_and_branches_are_unique() -> None:
    request = invite()
    request = request.replace(headers=request.headers.remove("Max-Forwards"))
    target = target_for_binding(binding(), flow_alive=True)
    assert target is not None
    one = forward_request(request, target, US, branch=new_branch(request))
    assert one.max_forwards == 70
    assert new_branch(request) != new_branch(request)
    assert not one.record_routes, "no source: nothing to record-route"


def test_loop_is_detected_but_a_spiral_is_not() -> None:
    request = invite()
    target = target_for_binding(binding(), flow_alive=True)
    assert target is not None
    forwarded = forward_request(request, target, US, branch=new_branch(request), source=CALLER)
    # The same request coming back unchanged (same Request-URI) is a loop (§16.3 step 4).
    looped = forwarded.replace(uri=request.uri, headers=forwarded.headers.remove("Record-Route"))
    assert find_loop(looped, US)
    # A spiral: it comes back with another Request-URI, so the loop hash differs.
    spiral = looped.replace(uri=parse_uri("sip:carol@example.org"))
    assert not find_loop(spiral, US)
    assert not find_loop(request, US)


def test_stateless_branch_is_the_same_for_an_invite_and_its_cancel() -> None:
    request = invite()
    cancel = request.replace(
        method="CANCEL", headers=request.headers.set("CSeq", "1 CANCEL"), body=b""
    )
    branch = stateless_branch(cancel)
    assert branch.startswith("z9hG4bK")
    assert branch == stateless_branch(request) == stateless_branch(cancel)
    other = cancel.replace(
        headers=cancel.headers.set("Via", "SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bKother")
    )
    assert stateless_branch(other) != branch
    # RFC 2543 peers: no magic cookie, the branch comes from the transaction's fields.
    legacy = cancel.replace(headers=cancel.headers.set("Via", "SIP/2.0/UDP 192.0.2.7:5062"))
    assert stateless_branch(legacy) == stateless_branch(legacy) != branch
    target = target_for_binding(binding(), flow_alive=True)
    assert target is not None
    looped = forward_request(cancel, target, US, branch=branch).replace(uri=cancel.uri)
    assert find_loop(looped, US), "the loop hash leads the branch, as in new_branch"


def test_flow_tokens_are_signed() -> None:
    token = encode_flow_token(DialogFlows(CALLER, PHONE), SECRET)
    assert decode_flow_token(token, SECRET) == DialogFlows(CALLER, PHONE)
    assert decode_flow_token(token, b"other" * 8) is None
    assert decode_flow_token("garbage", SECRET) is None
    assert decode_flow_token(token[:-1] + ("0" if token[-1] != "0" else "1"), SECRET) is None


def test_strip_own_routes_removes_ours_keeps_the_rest_and_reads_the_token() -> None:
    token = encode_flow_token(DialogFlows(CALLER, PHONE), SECRET)
    request = invite(
        f"Route: <sip:{token}@10.0.0.1:5060;transport=tcp;lr>, <sip:10.0.0.1;lr>\r\n"
        "Route: <sip:proxy.example.net;lr>\r\n"
    )
    stripped, flows = strip_own_routes(request, US)
    assert flows == DialogFlows(CALLER, PHONE)
    assert [str(r.uri) for r in stripped.routes] == ["sip:proxy.example.net;lr"]
    untouched, none = strip_own_routes(invite("Route: <sip:other.example.net;lr>\r\n"), US)
    assert none is None and len(untouched.routes) == 1


def test_binding_targets_path_then_live_flow_then_contact() -> None:
    via_path = target_for_binding(binding(path=("<sip:203.0.113.5:5070;lr>",)), flow_alive=True)
    assert via_path is not None
    assert via_path.destination == Endpoint("udp", "203.0.113.5", 5070)
    out = forward_request(invite(), via_path, US, branch=new_branch(invite()))
    assert [str(r.uri) for r in out.routes] == ["sip:203.0.113.5:5070;lr"]
    live = target_for_binding(binding(), flow_alive=True)
    assert live is not None and live.destination == PHONE
    dead = target_for_binding(binding(), flow_alive=False)
    assert dead is not None and dead.destination == Endpoint("tcp", "198.51.100.9", 40123)
    named = target_for_binding(binding(contact="sip:bob@phone.example.net;transport=tcp"), False)
    assert named is None
    # UDP: the Contact, unless it is a private address behind a NAT or outbound is used.
    source = Endpoint("udp", "203.0.113.9", 31000)
    plain = target_for_binding(binding(contact="sip:bob@203.0.113.9:5070", flow=source), False)
    assert plain is not None and plain.destination == Endpoint("udp", "203.0.113.9", 5070)
    natted = target_for_binding(binding(contact="sip:bob@192.168.1.5:5060", flow=source), False)
    assert natted is not None and natted.destination == source
    outbound = binding(contact="sip:bob@203.0.113.9:5070", flow=source, reg_id=1)
    assert target_for_binding(outbound, False) == ForwardTarget(parse_uri(outbound.contact), source)


def test_uri_destination_defaults() -> None:
    assert uri_destination(parse_uri("sip:1.2.3.4")) == Endpoint("udp", "1.2.3.4", 5060)
    assert uri_destination(parse_uri("sips:[::1]")) == Endpoint("tls", "::1", 5061)
    assert uri_destination(parse_uri("sip:pbx.example.org")) is None


def _response(request: Request, status: int, *extra: tuple[str, str]) -> Response:
    return make_response(request, status, to_tag="t", headers=extra)


@pytest.mark.parametrize(
    ("statuses", "best"),
    [
        ([486, 404, 603], 603),  # 6xx ends the search
        ([486, 404], 404),  # lowest class, then lowest code
        ([503], 500),  # 503 becomes 500 (§16.7 step 6)
        ([503, 486], 486),
        ([430], 480),  # Flow Failed is for proxies only (RFC 5626 §11)
        ([], 408),  # no final response: 408
        ([180], 408),
    ],
)
def test_best_response(statuses: list[int], best: int) -> None:
    request = invite()
    responses = [_response(request, s) for s in statuses]
    assert best_response(request, responses).status == best


def test_best_response_aggregates_challenges() -> None:
    request = invite()
    one = _response(request, 401, ("WWW-Authenticate", 'Digest realm="a"'))
    two = _response(request, 407, ("Proxy-Authenticate", 'Digest realm="b"'))
    best = best_response(request, [two, one])
    assert best.status == 401
    assert best.headers.get_all("WWW-Authenticate") == ['Digest realm="a"']
    assert best.headers.get_all("Proxy-Authenticate") == ['Digest realm="b"']


def test_response_upstream_removes_only_our_via() -> None:
    target = target_for_binding(binding(), flow_alive=True)
    assert target is not None
    forwarded = forward_request(invite(), target, US, branch=new_branch(invite()))
    response = make_response(forwarded, 180, to_tag="x")
    up = response_upstream(response)
    assert [v.branch for v in up.vias] == ["z9hG4bKcaller1"]
    merged = Headers([("Via", "SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/UDP b;branch=z9hG4bK2")])
    assert remove_top_via(merged).get_all("Via") == ["SIP/2.0/UDP b;branch=z9hG4bK2"]


def test_cancel_matches_the_forwarded_invite_and_carries_the_reason() -> None:
    target = target_for_binding(binding(), flow_alive=True)
    assert target is not None
    forwarded = forward_request(invite(), target, US, branch=new_branch(invite()), source=CALLER)
    cancel = build_cancel(forwarded, CALL_COMPLETED_ELSEWHERE)
    assert cancel.method == "CANCEL" and cancel.uri == forwarded.uri
    assert cancel.top_via == forwarded.top_via and len(cancel.vias) == 1
    assert cancel.cseq.seq == forwarded.cseq.seq and cancel.cseq.method == "CANCEL"
    assert cancel.headers.get("Reason") == CALL_COMPLETED_ELSEWHERE
    assert cancel.call_id == forwarded.call_id


def test_voip_push_for_a_call_alert_without_voip_token_and_never_voip_for_chat_rooms() -> None:
    call = invite(body="v=0\r\n", extra="Content-Type: application/sdp\r\n")
    (voip,) = push_requests_for(binding(push=APNS), call, deadline=190.0)
    assert voip.service is PushService.VOIP and voip.kind is PushKind.CALL
    assert voip.token == "aa11" and voip.call_id == "call-1@192.0.2.7"
    assert voip.caller_display == "Alice" and voip.caller_uri == "sip:alice@example.org"
    assert voip.instance == "urn:uuid:00000000-0000-0000-0000-000000000001"
    assert voip.deadline == 190.0 and voip.sandbox and voip.team_id == "TEAM1"
    remote_only = PushTarget("apns", False, "org.example.app", "TEAM1", (("remote", "bb22"),))
    (alert,) = push_requests_for(binding(push=remote_only), call, deadline=190.0)
    assert alert.service is PushService.REMOTE and alert.kind is PushKind.CALL
    room = invite(
        "Contact: <sip:chat@conf.example.org>;isfocus\r\n"
        "Content-Type: application/resource-lists+xml\r\n",
        body="<list/>",
    )
    room = room.replace(headers=room.headers.set("Contact", "<sip:chat@conf.example.org>;isfocus"))
    assert is_chat_room_invite(room) and not is_chat_room_invite(call)
    (chat,) = push_requests_for(binding(push=APNS), room, deadline=190.0)
    assert chat.service is PushService.REMOTE and chat.kind is PushKind.MESSAGE
    assert chat.chat_room_addr == "sip:alice@example.org"
    missed = push_requests_for(binding(push=APNS), call, deadline=1.0, kind=PushKind.MISSED_CALL)
    assert [m.service for m in missed] == [PushService.REMOTE]
    assert push_requests_for(binding(), call, deadline=1.0) == []
    fcm = PushTarget("fcm", False, "proj", None, (("remote", "fcm:tok"),))
    (data,) = push_requests_for(binding(push=fcm), call, deadline=5.0)
    assert data.provider == "fcm" and data.token == "fcm:tok"


def test_registered_binding_matches_held_ones_by_instance_key_or_token() -> None:
    held = binding(push=APNS)
    other = binding(key="k2", instance="<urn:uuid:2>", push=None)
    again = binding(flow=Endpoint("tcp", "198.51.100.9", 40999, flow=18))
    assert bindings_matching(again, [held, other]) == [held]
    reinstalled = binding(key="k3", instance="<urn:uuid:3>", push=APNS)
    assert bindings_matching(reinstalled, [held, other]) == [held]
    assert bindings_matching(binding(key="k4", instance=None), [other]) == []


def test_same_endpoint() -> None:
    assert same_endpoint(PHONE, Endpoint("tcp", "1.1.1.1", 1, flow=17))
    assert not same_endpoint(PHONE, Endpoint("tcp", "198.51.100.9", 40123, flow=18))
    assert same_endpoint(CALLER, Endpoint("udp", "192.0.2.7", 5062))
    assert not same_endpoint(CALLER, PHONE)
