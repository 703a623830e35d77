"""RFC 3261 §17.1 client transactions (INVITE and non-INVITE), time stepped by hand."""

from __future__ import annotations

import pytest

from sipushd.sip.addr import Endpoint
from sipushd.sip.headers import Headers
from sipushd.sip.message import Request, Response, make_response
from sipushd.sip.parser import parse_message
from sipushd.sip.transaction import (
    DeliverResponse,
    InviteClientState,
    NonInviteClientState,
    RequestSent,
    StrayResponse,
    TimerConfig,
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
from sipushd.sip.transaction import (
    MessageReceived as Received,
)
from sipushd.sip.uri import parse_uri
from tests.sip.timers import run_timers

NEXT_HOP_UDP = Endpoint("udp", "198.51.100.7", 5060)
NEXT_HOP_TCP = Endpoint("tcp", "198.51.100.7", 5060, flow=3)


def request(
    method: str = "INVITE",
    *,
    branch: str = "z9hG4bK-c1",
    transport: str = "UDP",
    cseq: int = 1,
    routes: tuple[str, ...] = (),
) -> Request:
    """A request as a TU hands it to the transaction layer (our Via on top)."""
    items = [
        ("Via", f"SIP/2.0/{transport} 203.0.113.1:5060;branch={branch}"),
        ("Via", "SIP/2.0/UDP 192.0.2.44:5062;branch=z9hG4bK-upstream;received=192.0.2.45"),
        ("Max-Forwards", "69"),
        ("From", '"Alice" <sip:alice@example.org>;tag=a1'),
        ("To", "<sip:bob@example.org>"),
        ("Call-ID", "call-1@example.org"),
        ("CSeq", f"{cseq} {method}"),
        *(("Route", r) for r in routes),
        ("Contact", "<sip:alice@192.0.2.44:5062>"),
        ("Content-Type", "application/sdp"),
    ]
    return Request(method, parse_uri("sip:bob@198.51.100.7"), Headers(items), b"v=0\r\n")


def answer(req: Request, status: int, to_tag: str | None = "b7") -> Response:
    """The next hop's response to `req`."""
    return make_response(req, status, to_tag=None if status == 100 else to_tag)


def start(layer: TransactionLayer, req: Request, dest: Endpoint) -> TransactionKey:
    actions = layer.handle(RequestSent(req, dest), 0.0)
    key = client_key(req)
    assert actions == [Transmit(req, dest, key)]
    return key


# --- INVITE client transaction (§17.1.1) ------------------------------------------------


def test_invite_udp_retransmits_with_doubling_interval_then_times_out_with_timer_b() -> None:
    layer = TransactionLayer()
    inv = request()
    key = start(layer, inv, NEXT_HOP_UDP)
    assert layer.state(key) is InviteClientState.CALLING
    assert layer.next_deadline() == 0.5

    fired = run_timers(layer, 100.0)

    # Timer A: T1, 2T1, 4T1 ... (INVITE requests are not capped at T2), B at 64*T1.
    resent = [t for t, a in fired if isinstance(a, Transmit)]
    assert resent == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert all(a == Transmit(inv, NEXT_HOP_UDP, key) for _, a in fired[:6])
    assert fired[6:] == [(32.0, TransactionTimedOut(key)), (32.0, TransactionTerminated(key))]
    assert len(layer) == 0
    assert layer.next_deadline() is None


def test_invite_tcp_has_no_timer_a_but_timer_b() -> None:
    layer = TransactionLayer()
    key = start(layer, request(transport="TCP"), NEXT_HOP_TCP)
    assert layer.next_deadline() == 32.0
    assert run_timers(layer, 100.0) == [
        (32.0, TransactionTimedOut(key)),
        (32.0, TransactionTerminated(key)),
    ]


def test_timer_b_follows_configured_t1() -> None:
    layer = TransactionLayer(TimerConfig(t1=0.1))
    key = start(layer, request(), NEXT_HOP_UDP)
    fired = run_timers(layer, 100.0)
    assert fired[-1][0] == pytest.approx(6.4)
    assert fired[-1][1] == TransactionTerminated(key)


def test_invite_provisional_moves_to_proceeding_and_stops_timers_a_and_b() -> None:
    layer = TransactionLayer()
    inv = request()
    key = start(layer, inv, NEXT_HOP_UDP)
    trying, ringing = answer(inv, 100), answer(inv, 180)

    assert layer.handle(Received(trying, NEXT_HOP_UDP), 0.2) == [DeliverResponse(trying, key)]
    assert layer.state(key) is InviteClientState.PROCEEDING
    assert layer.next_deadline() is None
    assert layer.handle(Received(ringing, NEXT_HOP_UDP), 0.3) == [DeliverResponse(ringing, key)]
    assert layer.state(key) is InviteClientState.PROCEEDING


@pytest.mark.parametrize("first", [None, 180])
def test_invite_non_2xx_final_over_udp_is_acked_and_absorbed_until_timer_d(
    first: int | None,
) -> None:
    layer = TransactionLayer()
    inv = request()
    key = start(layer, inv, NEXT_HOP_UDP)
    if first is not None:
        layer.handle(Received(answer(inv, first), NEXT_HOP_UDP), 0.1)
    busy = answer(inv, 486)

    actions = layer.handle(Received(busy, NEXT_HOP_UDP), 1.0)

    assert len(actions) == 2
    ack = actions[0]
    assert isinstance(ack, Transmit) and isinstance(ack.message, Request)
    assert ack.message.method == "ACK" and ack.destination == NEXT_HOP_UDP and ack.key == key
    assert actions[1] == DeliverResponse(busy, key)
    assert layer.state(key) is InviteClientState.COMPLETED
    assert layer.next_deadline() == 33.0  # timer D: 32 s on UDP

    # §17.1.1.2: a retransmitted final gets the same ACK again and is not delivered.
    assert layer.handle(Received(busy, NEXT_HOP_UDP), 2.0) == [ack]
    assert layer.handle(Received(answer(inv, 180), NEXT_HOP_UDP), 2.1) == []
    assert run_timers(layer, 100.0) == [(33.0, TransactionTerminated(key))]
    assert len(layer) == 0


def test_invite_non_2xx_final_over_tcp_terminates_at_once() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    key = start(layer, inv, NEXT_HOP_TCP)
    busy = answer(inv, 603)
    actions = layer.handle(Received(busy, NEXT_HOP_TCP), 1.0)
    assert [type(a) for a in actions] == [Transmit, DeliverResponse, TransactionTerminated]
    assert actions[1:] == [DeliverResponse(busy, key), TransactionTerminated(key)]
    assert len(layer) == 0
    assert layer.next_deadline() is None


def test_generated_ack_content() -> None:
    layer = TransactionLayer()
    inv = request(cseq=42, routes=("<sip:p1.example.org;lr>", "<sip:p2.example.org;lr>"))
    start(layer, inv, NEXT_HOP_UDP)
    busy = answer(inv, 486, to_tag="bob-tag")
    transmit = layer.handle(Received(busy, NEXT_HOP_UDP), 1.0)[0]
    assert isinstance(transmit, Transmit)
    ack = transmit.message
    assert isinstance(ack, Request)

    # RFC 3261 §17.1.1.3
    assert ack.method == "ACK"
    assert ack.uri == inv.uri
    assert ack.call_id == inv.call_id
    assert ack.from_ == inv.from_
    assert ack.to == busy.to and ack.to.tag == "bob-tag"
    assert (ack.cseq.seq, ack.cseq.method) == (42, "ACK")
    assert ack.vias == [inv.top_via]
    assert ack.headers.get_all("Route") == inv.headers.get_all("Route")
    assert ack.max_forwards == 70
    assert ack.body == b"" and "Contact" not in ack.headers
    assert b"Content-Length: 0\r\n" in ack.to_bytes()


def test_invite_2xx_goes_to_accepted_passes_every_2xx_up_and_never_acks() -> None:
    layer = TransactionLayer()
    inv = request()
    key = start(layer, inv, NEXT_HOP_UDP)
    ok = answer(inv, 200)

    assert layer.handle(Received(ok, NEXT_HOP_UDP), 1.0) == [DeliverResponse(ok, key)]
    assert layer.state(key) is InviteClientState.ACCEPTED
    # RFC 6026 §8.4: retransmitted (or forked) 2xx are passed up too; others absorbed.
    assert layer.handle(Received(ok, NEXT_HOP_UDP), 1.5) == [DeliverResponse(ok, key)]
    assert layer.handle(Received(answer(inv, 486), NEXT_HOP_UDP), 1.6) == []
    assert layer.handle(Received(answer(inv, 180), NEXT_HOP_UDP), 1.7) == []
    assert layer.next_deadline() == 33.0  # timer M = 64*T1
    assert run_timers(layer, 100.0) == [(33.0, TransactionTerminated(key))]
    # After Accepted, further 2xx are stray: a proxy forwards them statelessly.
    assert layer.handle(Received(ok, NEXT_HOP_UDP), 40.0) == [StrayResponse(ok, NEXT_HOP_UDP)]


def test_invite_2xx_over_tcp_still_waits_timer_m() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    key = start(layer, inv, NEXT_HOP_TCP)
    layer.handle(Received(answer(inv, 180), NEXT_HOP_TCP), 0.5)
    layer.handle(Received(answer(inv, 200), NEXT_HOP_TCP), 1.0)
    assert layer.state(key) is InviteClientState.ACCEPTED
    assert run_timers(layer, 100.0) == [(33.0, TransactionTerminated(key))]


# --- non-INVITE client transaction (§17.1.2) --------------------------------------------


def test_non_invite_udp_retransmits_capped_at_t2_then_times_out_with_timer_f() -> None:
    layer = TransactionLayer()
    msg = request("MESSAGE")
    key = start(layer, msg, NEXT_HOP_UDP)
    assert layer.state(key) is NonInviteClientState.TRYING

    fired = run_timers(layer, 100.0)

    # Timer E: T1, 2T1, 4T1, then T2 (4 s) until timer F at 64*T1.
    resent = [t for t, a in fired if isinstance(a, Transmit)]
    assert resent == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5, 19.5, 23.5, 27.5, 31.5]
    assert fired[-2:] == [(32.0, TransactionTimedOut(key)), (32.0, TransactionTerminated(key))]
    assert len(layer) == 0


def test_non_invite_proceeding_retransmits_every_t2() -> None:
    layer = TransactionLayer()
    msg = request("REGISTER")
    key = start(layer, msg, NEXT_HOP_UDP)
    trying = answer(msg, 100)
    assert layer.handle(Received(trying, NEXT_HOP_UDP), 0.2) == [DeliverResponse(trying, key)]
    assert layer.state(key) is NonInviteClientState.PROCEEDING

    fired = run_timers(layer, 100.0)

    # §17.1.2.2: E keeps running (armed at 0.5) and is reset to T2 in Proceeding.
    resent = [t for t, a in fired if isinstance(a, Transmit)]
    assert resent == [0.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5]
    assert fired[-2:] == [(32.0, TransactionTimedOut(key)), (32.0, TransactionTerminated(key))]


def test_non_invite_final_over_udp_absorbs_retransmissions_until_timer_k() -> None:
    layer = TransactionLayer()
    msg = request("OPTIONS")
    key = start(layer, msg, NEXT_HOP_UDP)
    ok = answer(msg, 200)
    assert layer.handle(Received(ok, NEXT_HOP_UDP), 0.7) == [DeliverResponse(ok, key)]
    assert layer.state(key) is NonInviteClientState.COMPLETED
    assert layer.next_deadline() == 5.7  # timer K = T4; E and F are gone

    assert layer.handle(Received(ok, NEXT_HOP_UDP), 1.0) == []
    assert layer.handle(Received(answer(msg, 100), NEXT_HOP_UDP), 1.1) == []
    assert run_timers(layer, 100.0) == [(5.7, TransactionTerminated(key))]
    assert len(layer) == 0


def test_non_invite_tcp_has_no_timer_e_and_terminates_on_final() -> None:
    layer = TransactionLayer()
    msg = request("MESSAGE", transport="TCP")
    key = start(layer, msg, NEXT_HOP_TCP)
    assert layer.next_deadline() == 32.0  # only F
    layer.handle(Received(answer(msg, 100), NEXT_HOP_TCP), 0.1)
    assert layer.state(key) is NonInviteClientState.PROCEEDING
    assert layer.next_deadline() == 32.0
    accepted = answer(msg, 202)
    assert layer.handle(Received(accepted, NEXT_HOP_TCP), 1.0) == [
        DeliverResponse(accepted, key),
        TransactionTerminated(key),
    ]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_non_invite_tcp_times_out_with_timer_f() -> None:
    layer = TransactionLayer()
    key = start(layer, request("OPTIONS", transport="TCP"), NEXT_HOP_TCP)
    assert run_timers(layer, 100.0) == [
        (32.0, TransactionTimedOut(key)),
        (32.0, TransactionTerminated(key)),
    ]


# --- matching (§17.1.3) and TU errors ----------------------------------------------------


def test_response_matching_uses_branch_and_cseq_method() -> None:
    layer = TransactionLayer()
    inv = request()
    key = start(layer, inv, NEXT_HOP_UDP)
    other_branch = answer(request(branch="z9hG4bK-other"), 200)
    assert layer.handle(Received(other_branch, NEXT_HOP_UDP), 0.1) == [
        StrayResponse(other_branch, NEXT_HOP_UDP)
    ]
    # Same branch, CSeq method CANCEL: the response to a CANCEL, not to the INVITE.
    cancel_ok = answer(request("CANCEL"), 200)
    assert layer.handle(Received(cancel_ok, NEXT_HOP_UDP), 0.2) == [
        StrayResponse(cancel_ok, NEXT_HOP_UDP)
    ]
    assert layer.state(key) is InviteClientState.CALLING


def test_cancel_is_its_own_client_transaction_with_the_invite_branch() -> None:
    layer = TransactionLayer()
    inv = request()
    invite_key = start(layer, inv, NEXT_HOP_UDP)
    layer.handle(Received(answer(inv, 180), NEXT_HOP_UDP), 0.1)
    cancel = request("CANCEL")
    cancel_key = start(layer, cancel, NEXT_HOP_UDP)
    assert cancel_key != invite_key and len(layer) == 2

    ok, terminated = answer(cancel, 200), answer(inv, 487)
    assert layer.handle(Received(ok, NEXT_HOP_UDP), 0.3) == [DeliverResponse(ok, cancel_key)]
    actions = layer.handle(Received(terminated, NEXT_HOP_UDP), 0.4)
    assert actions[1] == DeliverResponse(terminated, invite_key)


def test_ack_is_transmitted_without_a_transaction() -> None:
    layer = TransactionLayer()
    ack = request("ACK", branch="z9hG4bK-ack2xx")
    assert layer.handle(RequestSent(ack, NEXT_HOP_UDP), 0.0) == [Transmit(ack, NEXT_HOP_UDP)]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_tu_must_use_a_fresh_magic_cookie_branch() -> None:
    layer = TransactionLayer()
    with pytest.raises(TransactionError, match="z9hG4bK"):
        layer.handle(RequestSent(request(branch="1234"), NEXT_HOP_UDP), 0.0)
    start(layer, request(), NEXT_HOP_UDP)
    with pytest.raises(TransactionError, match="already exists"):
        layer.handle(RequestSent(request(), NEXT_HOP_UDP), 0.1)
    assert len(layer) == 1


def test_malformed_tu_request_is_a_transaction_error() -> None:
    layer = TransactionLayer()
    req = request()
    broken = req.replace(headers=req.headers.remove("Call-ID"))
    with pytest.raises(TransactionError, match="malformed"):
        layer.handle(RequestSent(broken, NEXT_HOP_UDP), 0.0)
    assert len(layer) == 0


@pytest.mark.parametrize("method", ["INVITE", "MESSAGE"])
@pytest.mark.parametrize("after_provisional", [False, True])
def test_transport_failure_terminates_and_reports(method: str, after_provisional: bool) -> None:
    layer = TransactionLayer()
    req = request(method)
    key = start(layer, req, NEXT_HOP_UDP)
    if after_provisional:
        layer.handle(Received(answer(req, 100), NEXT_HOP_UDP), 0.1)
    assert layer.handle(TransportFailed(key), 0.2) == [
        TransactionFailed(key),
        TransactionTerminated(key),
    ]
    assert len(layer) == 0 and layer.next_deadline() is None
    # A late report for a finished transaction is harmless.
    assert layer.handle(TransportFailed(key), 0.3) == []


def test_generated_ack_survives_the_wire() -> None:
    layer = TransactionLayer()
    inv = request(routes=("<sip:p1.example.org;lr>",))
    start(layer, inv, NEXT_HOP_UDP)
    transmit = layer.handle(Received(answer(inv, 404), NEXT_HOP_UDP), 1.0)[0]
    assert isinstance(transmit, Transmit)
    parsed = parse_message(transmit.message.to_bytes())
    assert isinstance(parsed, Request)
    assert parsed.method == "ACK" and parsed.transaction_branch == "z9hG4bK-c1"
    assert parsed.headers == transmit.message.headers
