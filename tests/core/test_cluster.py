"""Path entries of a node sharing a store (RFC 3327, RFC 5626 §5.3), without an event loop."""

from __future__ import annotations

from sipushd.core.binding import Binding
from sipushd.core.cluster import ClusterPaths
from sipushd.core.proxy import (
    DialogFlows,
    LocalAddress,
    ProxyIdentity,
    encode_flow_token,
    forward_request,
    new_branch,
    target_for_binding,
)
from sipushd.sip import Endpoint, Request, parse_message

NODE_A = ClusterPaths(LocalAddress("udp", "10.0.0.1", 5060), b"a" * 32)
NODE_B = ClusterPaths(LocalAddress("tcp", "10.0.0.2", 5070), b"b" * 32)
PHONE = Endpoint("tcp", "198.51.100.9", 40123, flow=17)
EDGE = "<sip:edge.example.net;lr>"


def binding(**changes: object) -> Binding:
    values: dict[str, object] = {
        "aor": "sip:bob@example.org",
        "key": "k",
        "contact": "sip:bob@198.51.100.9:40123;transport=tcp",
        "expires_at": 3600.0,
        "call_id": "c",
        "cseq": 1,
        "flow": PHONE,
        "registered_at": 0.0,
        "updated_at": 0.0,
    }
    values.update(changes)
    return Binding(**values)  # type: ignore[arg-type]


def request(routes: tuple[str, ...], to_tag: str = "") -> Request:
    route = "".join(f"Route: {r}\r\n" for r in routes)
    tag = f";tag={to_tag}" if to_tag else ""
    message = parse_message(
        (
            "INVITE sip:bob@198.51.100.9:40123;transport=tcp SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 10.0.0.1:5060;branch=z9hG4bKnodea;rport\r\n"
            f"{route}"
            "Max-Forwards: 69\r\n"
            "From: <sip:alice@example.net>;tag=a1\r\n"
            f"To: <sip:bob@example.org>{tag}\r\n"
            "Call-ID: call-1\r\n"
            "CSeq: 1 INVITE\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
    )
    assert isinstance(message, Request)
    return message


def test_a_stamped_binding_leads_other_nodes_to_the_holder_first() -> None:
    stamped = NODE_B.stamp(binding(path=(EDGE,)))
    first, rest = stamped.path[0], stamped.path[1:]
    assert first.startswith("<sip:") and first.endswith("@10.0.0.2:5070;transport=tcp;lr>")
    assert rest == (EDGE,)  # RFC 3327 §5.3: the UA's own Path follows
    # Another node forks to the binding through node B (the Path becomes the Route set).
    target = target_for_binding(stamped, flow_alive=False)
    assert target is not None
    assert target.destination == Endpoint("tcp", "10.0.0.2", 5070)
    assert target.routes == stamped.path


def test_the_holder_reads_its_binding_without_its_own_entry() -> None:
    stamped = NODE_B.stamp(binding(path=(EDGE,)))
    assert NODE_B.own(stamped) == binding(path=(EDGE,))
    assert NODE_A.own(stamped) == stamped  # another node's entry stays
    assert NODE_B.stamp(stamped).path[1:] == (EDGE,), "stamping twice keeps one entry"


def test_the_holder_finds_the_flow_of_a_request_routed_through_its_entry() -> None:
    stamped = NODE_B.stamp(binding(path=(EDGE,)))
    target = target_for_binding(stamped, flow_alive=False)
    assert target is not None
    identity = ProxyIdentity((LocalAddress("udp", "10.0.0.1", 5060),), frozenset(), b"x" * 32)
    forwarded = forward_request(request(()), target, identity, branch=new_branch(request(())))
    hop = NODE_B.hop(forwarded)
    assert hop is not None and hop.flow == PHONE
    # Our entry is gone, the UA's own Path is still the Route set (§16.4).
    assert hop.request.headers.values("Route") == [EDGE]


def test_only_out_of_dialog_requests_with_our_entry_are_relayed() -> None:
    entry = NODE_B.entry(PHONE)
    assert NODE_B.hop(request(())) is None
    assert NODE_B.hop(request((NODE_A.entry(PHONE),))) is None
    assert NODE_B.hop(request((entry,), to_tag="b1")) is None  # dialogs follow Record-Route


def test_an_entry_the_holder_cannot_read_names_no_flow() -> None:
    # Written by an earlier process of the node (another key), or forged: never a flow id.
    stale = ClusterPaths(NODE_B.address, b"old" * 11).entry(PHONE)
    hop = NODE_B.hop(request((stale,)))
    assert hop is not None and hop.flow is None
    # A token made with the right key but for another node's address names no flow either.
    token = encode_flow_token(DialogFlows(Endpoint("udp", "10.9.9.9", 5060), PHONE), b"b" * 32)
    forged = f"<sip:{token}@10.0.0.2:5070;transport=tcp;lr>"
    hop = NODE_B.hop(request((forged,)))
    assert hop is not None and hop.flow is None


def test_ipv6_addresses_are_bracketed_and_compared_canonically() -> None:
    paths = ClusterPaths(LocalAddress("udp", "2001:db8::2", 5060), b"c" * 32)
    entry = paths.entry(Endpoint("udp", "192.0.2.5", 5060))
    assert entry.endswith("@[2001:db8::2]:5060;lr>")
    expanded = entry.replace("[2001:db8::2]", "[2001:db8:0:0::2]")
    hop = paths.hop(request((expanded,)))
    assert hop is not None and hop.flow == Endpoint("udp", "192.0.2.5", 5060)
