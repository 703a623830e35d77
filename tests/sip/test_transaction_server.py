"""RFC 3261 §17.2 server transactions, §17.2.3 matching, §9.2 CANCEL, time stepped by hand."""

from __future__ import annotations

import pytest

from sipushd.sip.addr import Endpoint
from sipushd.sip.headers import Headers
from sipushd.sip.message import Request, Response, make_response
from sipushd.sip.parser import parse_message
from sipushd.sip.transaction import (
    Action,
    DeliverAck,
    DeliverCancel,
    DeliverRequest,
    InviteServerState,
    MessageReceived,
    NonInviteServerState,
    ResponseSent,
    TransactionError,
    TransactionKey,
    TransactionLayer,
    TransactionTerminated,
    TransactionTimedOut,
    Transmit,
    TransportFailed,
    response_destination,
)
from sipushd.sip.uri import parse_uri
from tests.sip.timers import run_timers

PHONE_UDP = Endpoint("udp", "192.0.2.44", 40001)
PHONE_TCP = Endpoint("tcp", "192.0.2.44", 40001, flow=9)
# §18.2.2: responses use the request's connection, else reconnect to the sent-by port.
PHONE_TCP_REPLY = Endpoint("tcp", "192.0.2.44", 5062, flow=9)


def request(
    method: str = "INVITE",
    *,
    branch: str | None = "z9hG4bK-s1",
    transport: str = "UDP",
    sent_by: str = "10.0.0.2:5062",
    rport: bool = True,
    to_tag: str | None = None,
    call_id: str = "call-9@10.0.0.2",
    cseq: int = 7,
    uri: str = "sip:bob@example.org",
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    """A request as a phone sends it."""
    via = f"SIP/2.0/{transport} {sent_by}"
    via += f";branch={branch}" if branch is not None else ""
    via += ";rport" if rport else ""
    to = "<sip:bob@example.org>" + (f";tag={to_tag}" if to_tag else "")
    items = [
        ("Via", via),
        ("Max-Forwards", "70"),
        ("From", "<sip:alice@example.org>;tag=a1"),
        ("To", to),
        ("Call-ID", call_id),
        ("CSeq", f"{cseq} {method}"),
        *headers,
    ]
    return Request(method, parse_uri(uri), Headers(items))


def ack_for(req: Request, response: Response, new_branch: str | None = None) -> Request:
    """The phone's ACK: for a non-2xx final it reuses the request's top Via (§17.1.1.3),
    for a 2xx it is a new transaction with `new_branch` (§13.2.2.4)."""
    via = req.top_via if new_branch is None else req.top_via.with_param("branch", new_branch)
    ack = request("ACK", cseq=req.cseq.seq, uri=str(req.uri))
    headers = ack.headers.set("Via", str(via)).set("To", response.headers.get("To") or "")
    return ack.replace(headers=headers)


def receive(
    layer: TransactionLayer, req: Request, source: Endpoint = PHONE_UDP, now: float = 0.0
) -> tuple[TransactionKey, list[Action]]:
    """Feed a new request; return the server transaction key the TU was given."""
    actions = layer.handle(MessageReceived(req, source), now)
    delivered = [a for a in actions if isinstance(a, DeliverRequest | DeliverCancel)]
    assert len(delivered) == 1
    return delivered[0].key, actions


def sent(actions: list[Action]) -> list[Request | Response]:
    return [a.message for a in actions if isinstance(a, Transmit)]


# --- INVITE server transaction (§17.2.1) -------------------------------------------------


def test_invite_sends_100_trying_at_once_and_delivers_to_tu() -> None:
    layer = TransactionLayer()
    inv = request(headers=(("Timestamp", "54.2"),))
    key, actions = receive(layer, inv)

    trying = actions[0]
    assert isinstance(trying, Transmit) and isinstance(trying.message, Response)
    assert trying.message.status == 100 and trying.destination == PHONE_UDP
    assert trying.message.to.tag is None  # §8.2.6.1
    assert trying.message.headers.get("Timestamp") == "54.2"
    assert trying.message.top_via == inv.top_via and trying.message.cseq == inv.cseq
    assert actions[1] == DeliverRequest(inv, PHONE_UDP, key)
    assert layer.state(key) is InviteServerState.PROCEEDING
    assert layer.next_deadline() is None  # Proceeding waits for the TU


def test_invite_retransmission_is_absorbed_and_gets_latest_provisional() -> None:
    layer = TransactionLayer()
    inv = request()
    key, actions = receive(layer, inv)
    trying = actions[0]
    assert layer.handle(MessageReceived(inv, PHONE_UDP), 0.5) == [trying]

    ringing = make_response(inv, 180, to_tag="b1")
    assert layer.handle(ResponseSent(ringing, key), 1.0) == [Transmit(ringing, PHONE_UDP, key)]
    assert layer.handle(MessageReceived(inv, PHONE_UDP), 1.5) == [Transmit(ringing, PHONE_UDP, key)]
    assert layer.state(key) is InviteServerState.PROCEEDING


def test_invite_final_over_udp_retransmits_with_timer_g_until_timer_h() -> None:
    layer = TransactionLayer()
    inv = request()
    key, _ = receive(layer, inv)
    busy = make_response(inv, 486, to_tag="b1")
    assert layer.handle(ResponseSent(busy, key), 1.0) == [Transmit(busy, PHONE_UDP, key)]
    assert layer.state(key) is InviteServerState.COMPLETED

    fired = run_timers(layer, 100.0)

    # Timer G: T1, 2T1, 4T1, then capped at T2; timer H at 64*T1 without an ACK.
    resent = [t for t, a in fired if isinstance(a, Transmit)]
    assert resent == [1.5, 2.5, 4.5, 8.5, 12.5, 16.5, 20.5, 24.5, 28.5, 32.5]
    assert all(a == Transmit(busy, PHONE_UDP, key) for t, a in fired if t < 33.0)
    assert fired[-2:] == [(33.0, TransactionTimedOut(key)), (33.0, TransactionTerminated(key))]
    assert len(layer) == 0


def test_invite_retransmission_in_completed_gets_the_final_again() -> None:
    layer = TransactionLayer()
    inv = request()
    key, _ = receive(layer, inv)
    busy = make_response(inv, 486, to_tag="b1")
    layer.handle(ResponseSent(busy, key), 1.0)
    assert layer.handle(MessageReceived(inv, PHONE_UDP), 1.2) == [Transmit(busy, PHONE_UDP, key)]


def test_ack_for_non_2xx_is_absorbed_and_confirmed_absorbs_until_timer_i() -> None:
    layer = TransactionLayer()
    inv = request()
    key, _ = receive(layer, inv)
    busy = make_response(inv, 486, to_tag="b1")
    layer.handle(ResponseSent(busy, key), 1.0)
    ack = ack_for(inv, busy)

    assert layer.handle(MessageReceived(ack, PHONE_UDP), 1.3) == []
    assert layer.state(key) is InviteServerState.CONFIRMED
    assert layer.next_deadline() == 6.3  # timer I = T4; G and H are gone
    assert layer.handle(MessageReceived(ack, PHONE_UDP), 2.0) == []
    assert layer.handle(MessageReceived(inv, PHONE_UDP), 2.1) == []
    assert run_timers(layer, 100.0) == [(6.3, TransactionTerminated(key))]
    assert len(layer) == 0
    # Once gone, a late ACK retransmission reaches the TU like any unmatched ACK.
    assert layer.handle(MessageReceived(ack, PHONE_UDP), 7.0) == [DeliverAck(ack, PHONE_UDP)]


def test_invite_final_over_tcp_no_timer_g_and_ack_terminates_at_once() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    key, actions = receive(layer, inv, PHONE_TCP)
    assert [(a.destination, a.key) for a in actions if isinstance(a, Transmit)] == [
        (PHONE_TCP_REPLY, key)
    ]
    busy = make_response(inv, 404, to_tag="b1")
    layer.handle(ResponseSent(busy, key), 1.0)
    assert layer.next_deadline() == 33.0  # only timer H
    assert layer.handle(MessageReceived(ack_for(inv, busy), PHONE_TCP), 1.1) == [
        TransactionTerminated(key)
    ]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_invite_final_over_tcp_without_ack_times_out_with_timer_h() -> None:
    layer = TransactionLayer()
    inv = request(transport="TCP")
    key, _ = receive(layer, inv, PHONE_TCP)
    layer.handle(ResponseSent(make_response(inv, 480, to_tag="b1"), key), 1.0)
    assert run_timers(layer, 100.0) == [
        (33.0, TransactionTimedOut(key)),
        (33.0, TransactionTerminated(key)),
    ]


@pytest.mark.parametrize(
    ("source", "reply"), [(PHONE_UDP, PHONE_UDP), (PHONE_TCP, PHONE_TCP_REPLY)]
)
def test_invite_2xx_goes_to_accepted_until_timer_l(source: Endpoint, reply: Endpoint) -> None:
    layer = TransactionLayer()
    inv = request(transport=source.transport.upper())
    key, _ = receive(layer, inv, source)
    ok = make_response(inv, 200, to_tag="b1")
    assert layer.handle(ResponseSent(ok, key), 2.0) == [Transmit(ok, reply, key)]
    assert layer.state(key) is InviteServerState.ACCEPTED

    # RFC 6026 §7.1: INVITE retransmissions absorbed, the TU's 2xx retransmissions sent.
    assert layer.handle(MessageReceived(inv, source), 2.4) == []
    assert layer.handle(ResponseSent(ok, key), 2.5) == [Transmit(ok, reply, key)]
    # The ACK for a 2xx carries a new branch: it is the TU's (§17.2.3).
    ack = ack_for(inv, ok, new_branch="z9hG4bK-ack2xx")
    assert layer.handle(MessageReceived(ack, source), 2.6) == [DeliverAck(ack, source)]
    assert layer.state(key) is InviteServerState.ACCEPTED
    assert run_timers(layer, 100.0) == [(34.0, TransactionTerminated(key))]


def test_impossible_tu_responses_raise() -> None:
    layer = TransactionLayer()
    inv = request()
    key, _ = receive(layer, inv)
    layer.handle(ResponseSent(make_response(inv, 486, to_tag="b1"), key), 1.0)
    with pytest.raises(TransactionError, match="Completed"):
        layer.handle(ResponseSent(make_response(inv, 200, to_tag="b1"), key), 1.1)

    other = request(branch="z9hG4bK-s2")
    key2, _ = receive(layer, other)
    layer.handle(ResponseSent(make_response(other, 200, to_tag="b2"), key2), 1.0)
    with pytest.raises(TransactionError, match="Accepted"):
        layer.handle(ResponseSent(make_response(other, 180, to_tag="b2"), key2), 1.1)
    with pytest.raises(TransactionError, match="status"):
        layer.handle(ResponseSent(make_response(other, 99), key2), 1.1)
    assert layer.state(key) is InviteServerState.COMPLETED
    assert layer.state(key2) is InviteServerState.ACCEPTED


def test_response_for_unknown_transaction_raises() -> None:
    layer = TransactionLayer()
    inv = request()
    key, _ = receive(layer, inv)
    layer.handle(TransportFailed(key), 0.1)
    with pytest.raises(TransactionError, match="no live server transaction"):
        layer.handle(ResponseSent(make_response(inv, 200), key), 0.2)


# --- non-INVITE server transaction (§17.2.2) ---------------------------------------------


def test_non_invite_over_udp_all_states_and_timer_j() -> None:
    layer = TransactionLayer()
    msg = request("MESSAGE")
    key, actions = receive(layer, msg)
    assert actions == [DeliverRequest(msg, PHONE_UDP, key)]  # no 100 for non-INVITE
    assert layer.state(key) is NonInviteServerState.TRYING
    assert layer.handle(MessageReceived(msg, PHONE_UDP), 0.5) == []  # absorbed in Trying

    trying = make_response(msg, 100)
    assert layer.handle(ResponseSent(trying, key), 1.0) == [Transmit(trying, PHONE_UDP, key)]
    assert layer.state(key) is NonInviteServerState.PROCEEDING
    assert layer.handle(MessageReceived(msg, PHONE_UDP), 1.5) == [Transmit(trying, PHONE_UDP, key)]

    accepted = make_response(msg, 202, to_tag="b1")
    assert layer.handle(ResponseSent(accepted, key), 2.0) == [Transmit(accepted, PHONE_UDP, key)]
    assert layer.state(key) is NonInviteServerState.COMPLETED
    assert layer.next_deadline() == 34.0  # timer J = 64*T1, no retransmission timer
    assert layer.handle(MessageReceived(msg, PHONE_UDP), 3.0) == [
        Transmit(accepted, PHONE_UDP, key)
    ]
    # §17.2.2: further final responses from the TU are discarded.
    assert layer.handle(ResponseSent(make_response(msg, 500), key), 3.1) == []
    assert run_timers(layer, 100.0) == [(34.0, TransactionTerminated(key))]
    assert len(layer) == 0


def test_non_invite_over_tcp_terminates_on_final() -> None:
    layer = TransactionLayer()
    msg = request("REGISTER", transport="TCP")
    key, _ = receive(layer, msg, PHONE_TCP)
    ok = make_response(msg, 200, to_tag="b1")
    assert layer.handle(ResponseSent(ok, key), 0.1) == [
        Transmit(ok, PHONE_TCP_REPLY, key),
        TransactionTerminated(key),
    ]
    assert len(layer) == 0 and layer.next_deadline() is None


def test_transport_failure_ends_a_server_transaction() -> None:
    layer = TransactionLayer()
    msg = request("OPTIONS")
    key, _ = receive(layer, msg)
    actions = layer.handle(TransportFailed(key), 0.1)
    assert actions[-1] == TransactionTerminated(key) and len(layer) == 0


# --- §18.2.2 response destination ---------------------------------------------------------


def test_response_destination() -> None:
    assert response_destination(request(), PHONE_UDP) == PHONE_UDP  # rport: source port
    stamped = request(sent_by="10.0.0.2:5062;received=192.0.2.44;rport=40001", rport=False)
    assert response_destination(stamped, PHONE_UDP) == PHONE_UDP
    assert response_destination(request(rport=False), PHONE_UDP) == Endpoint(
        "udp", "192.0.2.44", 5062
    )
    no_port = request(rport=False, sent_by="10.0.0.2")
    assert response_destination(no_port, PHONE_UDP).port == 5060
    multicast = request(sent_by="10.0.0.2:5062;maddr=239.255.255.1")
    assert response_destination(multicast, PHONE_UDP) == Endpoint("udp", "239.255.255.1", 5062)
    # TCP/TLS: the same connection; the sent-by port if it has to be reopened.
    assert response_destination(request(transport="TCP"), PHONE_TCP) == Endpoint(
        "tcp", "192.0.2.44", 5062, flow=9
    )
    tls = Endpoint("tls", "192.0.2.44", 40002, flow=4)
    assert response_destination(request(transport="TLS", sent_by="10.0.0.2"), tls) == Endpoint(
        "tls", "192.0.2.44", 5061, flow=4
    )


# --- matching (§17.2.3) ---------------------------------------------------------------------


def test_magic_cookie_matching_uses_branch_sent_by_and_method() -> None:
    layer = TransactionLayer()
    inv = request()
    key, _ = receive(layer, inv)
    # Same branch from another sent-by, or another method: new transactions.
    key2, _ = receive(layer, request(sent_by="10.0.0.3:5062"))
    key3, _ = receive(layer, request("OPTIONS"))
    assert len({key, key2, key3}) == 3 and len(layer) == 3
    # Transport and received parameters do not matter, the branch does.
    moved = request(rport=False)
    assert layer.handle(MessageReceived(moved, PHONE_UDP), 0.2) == [
        Transmit(make_response(inv, 100), PHONE_UDP, key)
    ]


def test_cancel_matches_its_invite_and_is_its_own_transaction() -> None:
    layer = TransactionLayer()
    inv = request()
    invite_key, _ = receive(layer, inv)
    cancel = request("CANCEL")
    cancel_key, actions = receive(layer, cancel, now=1.0)
    assert actions == [DeliverCancel(cancel, PHONE_UDP, cancel_key, invite_key)]
    assert cancel_key != invite_key and len(layer) == 2
    # A CANCEL retransmission is absorbed by the CANCEL's transaction.
    assert layer.handle(MessageReceived(cancel, PHONE_UDP), 1.5) == []

    # The TU answers both (§9.2); the phone ACKs the 487 into the INVITE transaction.
    ok = make_response(cancel, 200, to_tag="b1")
    terminated = make_response(inv, 487, to_tag="b1")
    assert layer.handle(ResponseSent(ok, cancel_key), 1.1) == [Transmit(ok, PHONE_UDP, cancel_key)]
    layer.handle(ResponseSent(terminated, invite_key), 1.1)
    assert layer.handle(MessageReceived(ack_for(inv, terminated), PHONE_UDP), 1.2) == []
    assert layer.state(invite_key) is InviteServerState.CONFIRMED


def test_cancel_without_invite_has_no_invite_key() -> None:
    layer = TransactionLayer()
    cancel = request("CANCEL", branch="z9hG4bK-nothing")
    key, actions = receive(layer, cancel)
    assert actions == [DeliverCancel(cancel, PHONE_UDP, key, None)]


def test_rfc2543_fallback_matching() -> None:
    layer = TransactionLayer()
    inv = request(branch=None, rport=False)
    key, _ = receive(layer, inv)
    assert key.legacy

    # Same Request-URI, tags, Call-ID, CSeq number, top Via: a retransmission.
    again = layer.handle(MessageReceived(inv, PHONE_UDP), 0.5)
    assert [type(a) for a in again] == [Transmit]
    # A different Call-ID, CSeq or Request-URI is a new transaction.
    receive(layer, request(branch=None, rport=False, call_id="other"))
    receive(layer, request(branch=None, rport=False, cseq=8))
    receive(layer, request(branch=None, rport=False, uri="sip:carol@example.org"))
    assert len(layer) == 4

    # CANCEL: same fields, CSeq method CANCEL.
    cancel = request("CANCEL", branch=None, rport=False)
    cancel_key, actions = receive(layer, cancel)
    assert actions == [DeliverCancel(cancel, PHONE_UDP, cancel_key, key)]

    # ACK: matched through the To tag of the response we sent.
    busy = make_response(inv, 486, to_tag="b9")
    layer.handle(ResponseSent(busy, key), 1.0)
    wrong = ack_for(inv, make_response(inv, 486, to_tag="zz"))
    assert layer.handle(MessageReceived(wrong, PHONE_UDP), 1.1) == [DeliverAck(wrong, PHONE_UDP)]
    assert layer.state(key) is InviteServerState.COMPLETED
    assert layer.handle(MessageReceived(ack_for(inv, busy), PHONE_UDP), 1.2) == []
    assert layer.state(key) is InviteServerState.CONFIRMED


def test_rfc2543_ack_for_re_invite_matches() -> None:
    layer = TransactionLayer()
    reinvite = request(branch=None, to_tag="b9", cseq=8)
    key, _ = receive(layer, reinvite)
    busy = make_response(reinvite, 491)
    layer.handle(ResponseSent(busy, key), 1.0)
    assert layer.handle(MessageReceived(ack_for(reinvite, busy), PHONE_UDP), 1.1) == []
    assert layer.state(key) is InviteServerState.CONFIRMED


def test_ack_while_proceeding_is_absorbed() -> None:
    layer = TransactionLayer()
    inv = request()
    key, actions = receive(layer, inv)
    trying = sent(actions)[0]
    assert isinstance(trying, Response)
    assert layer.handle(MessageReceived(ack_for(inv, trying), PHONE_UDP), 0.1) == []
    assert layer.state(key) is InviteServerState.PROCEEDING


def test_wire_messages_from_a_phone() -> None:
    raw = (
        b"INVITE sip:bob@example.org SIP/2.0\r\n"
        b"v: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"t: Bob <sip:bob@example.org>\r\n"
        b"f: Alice <sip:alice@example.org>;tag=1928301774\r\n"
        b"i: a84b4c76e66710@pc33.example.org\r\n"
        b"CSeq: 314159 INVITE\r\n"
        b"m: <sip:alice@10.0.0.2:5062>\r\n"
        b"l: 0\r\n\r\n"
    )
    layer = TransactionLayer()
    key, actions = receive(layer, _parse_request(raw))
    trying = _parse(sent(actions)[0].to_bytes())
    assert isinstance(trying, Response) and trying.status == 100
    assert trying.top_via.branch == "z9hG4bK776asdhds" and trying.cseq.seq == 314159
    # The retransmission is parsed afresh and still matches.
    assert sent(layer.handle(MessageReceived(_parse(raw), PHONE_UDP), 0.5)) == sent(actions)[:1]
    busy = make_response(_parse_request(raw), 486, to_tag="x1")
    layer.handle(ResponseSent(busy, key), 1.0)
    ack = (
        b"ACK sip:bob@example.org SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 10.0.0.2:5062;branch=z9hG4bK776asdhds;rport\r\n"
        b"Max-Forwards: 70\r\n"
        b"To: Bob <sip:bob@example.org>;tag=x1\r\n"
        b"From: Alice <sip:alice@example.org>;tag=1928301774\r\n"
        b"Call-ID: a84b4c76e66710@pc33.example.org\r\n"
        b"CSeq: 314159 ACK\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    assert layer.handle(MessageReceived(_parse(ack), PHONE_UDP), 1.1) == []
    assert layer.state(key) is InviteServerState.CONFIRMED


def _parse(data: bytes) -> Request | Response:
    return parse_message(data)


def _parse_request(data: bytes) -> Request:
    message = parse_message(data)
    assert isinstance(message, Request)
    return message
