"""Transaction layer as a whole: timer bookkeeping, table completeness, no leaks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipushd.sip._txn_machines import (
    Event,
    InviteClientTransaction,
    InviteServerTransaction,
    NonInviteClientTransaction,
    NonInviteServerTransaction,
    Transaction,
)
from sipushd.sip.addr import Endpoint
from sipushd.sip.headers import Headers
from sipushd.sip.message import Request, make_response
from sipushd.sip.transaction import (
    Action,
    DeliverRequest,
    InviteClientState,
    InviteServerState,
    MessageReceived,
    NonInviteServerState,
    RequestSent,
    ResponseSent,
    Timer,
    TimerConfig,
    TimerFired,
    TransactionLayer,
    TransactionTerminated,
    Transmit,
    TransportFailed,
    client_key,
)
from sipushd.sip.uri import parse_uri

UDP = Endpoint("udp", "192.0.2.44", 5060)
TCP = Endpoint("tcp", "192.0.2.44", 5060, flow=1)


def request(method: str, branch: str, transport: str = "UDP") -> Request:
    items = [
        ("Via", f"SIP/2.0/{transport} 192.0.2.44:5060;branch={branch};rport"),
        ("Max-Forwards", "70"),
        ("From", "<sip:alice@example.org>;tag=a1"),
        ("To", "<sip:bob@example.org>"),
        ("Call-ID", f"call-{branch}"),
        ("CSeq", f"1 {method}"),
    ]
    return Request(method, parse_uri("sip:bob@example.org"), Headers(items))


def run_timers(layer: TransactionLayer, until: float) -> list[Action]:
    fired: list[Action] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        fired += layer.handle(TimerFired(), deadline)
    return fired


def test_timer_config_defaults_and_validation() -> None:
    config = TimerConfig()
    assert (config.t1, config.t2, config.t4) == (0.5, 4.0, 5.0)
    assert config.duration(Timer.A, reliable=False) == 0.5
    assert config.duration(Timer.A, reliable=True) is None
    assert config.duration(Timer.B, reliable=True) == 32.0
    for timer in (Timer.D, Timer.I, Timer.J, Timer.K):
        assert config.duration(timer, reliable=True) == 0.0
    assert config.duration(Timer.J, reliable=False) == 32.0
    assert config.duration(Timer.K, reliable=False) == 5.0
    with pytest.raises(ValueError, match="t1"):
        TimerConfig(t1=0)
    with pytest.raises(ValueError, match="t2"):
        TimerConfig(t1=5.0, t2=4.0)


def test_next_deadline_is_the_earliest_across_transactions_and_fires_all_due() -> None:
    layer = TransactionLayer()
    layer.handle(RequestSent(request("OPTIONS", "z9hG4bK-1"), UDP), 0.0)  # E at 0.5
    layer.handle(RequestSent(request("OPTIONS", "z9hG4bK-2"), UDP), 0.2)  # E at 0.7
    layer.handle(RequestSent(request("INVITE", "z9hG4bK-3", "TCP"), TCP), 0.1)  # B at 32.1
    assert layer.next_deadline() == 0.5
    # Called late: both due retransmissions go out, in deadline order.
    actions = layer.handle(TimerFired(), 0.8)
    assert [a.key.branch for a in actions if isinstance(a, Transmit) and a.key] == [
        "z9hG4bK-1",
        "z9hG4bK-2",
    ]
    # Timers are re-armed from the time they were handled.
    assert layer.next_deadline() == 1.8
    assert layer.handle(TimerFired(), 1.0) == []  # nothing due yet


def test_many_transactions_run_to_termination_leave_nothing_behind() -> None:
    layer = TransactionLayer()
    log: list[Action] = []
    for i in range(200):
        dest, transport = (UDP, "UDP") if i % 2 else (TCP, "TCP")
        final = 200 if i % 3 == 0 else 486

        def feed(event: MessageReceived | RequestSent | ResponseSent, now: float = i / 100) -> None:
            log.extend(layer.handle(event, now))

        # Client INVITE (100 then final), client MESSAGE (202), client OPTIONS (times out).
        inv = request("INVITE", f"z9hG4bK-ci{i}", transport)
        msg = request("MESSAGE", f"z9hG4bK-cm{i}", transport)
        for req in (inv, msg, request("OPTIONS", f"z9hG4bK-co{i}", transport)):
            feed(RequestSent(req, dest))
        feed(MessageReceived(make_response(inv, 100), dest))
        feed(MessageReceived(make_response(inv, final, to_tag="t"), dest))
        feed(MessageReceived(make_response(msg, 202, to_tag="t"), dest))
        # Server INVITE (final, ACKed when non-2xx) and server REGISTER (200).
        sinv = request("INVITE", f"z9hG4bK-si{i}", transport)
        sreg = request("REGISTER", f"z9hG4bK-sr{i}", transport)
        feed(MessageReceived(sinv, dest))
        feed(MessageReceived(sreg, dest))
        keys = [a.key for a in log[-4:] if isinstance(a, DeliverRequest)]
        answer = make_response(sinv, final, to_tag="t")
        feed(ResponseSent(answer, keys[0]))
        if final != 200:
            ack_headers = sinv.headers.set("CSeq", "1 ACK").set(
                "To", answer.headers.get("To") or ""
            )
            feed(MessageReceived(Request("ACK", sinv.uri, ack_headers), dest))
        feed(ResponseSent(make_response(sreg, 200, to_tag="t"), keys[1]))
    assert len(layer) > 0

    log += run_timers(layer, 1000.0)

    assert len(layer) == 0
    assert layer.next_deadline() is None
    assert len(layer._scheduler) == 0
    ended = {a.key for a in log if isinstance(a, TransactionTerminated)}
    assert len(ended) == sum(isinstance(a, TransactionTerminated) for a in log) == 5 * 200


def test_cancelled_timers_do_not_pile_up() -> None:
    layer = TransactionLayer()
    for i in range(1000):
        # Over TCP a final response ends the transaction at once, cancelling timer F.
        msg = request("MESSAGE", f"z9hG4bK-{i}", "TCP")
        layer.handle(RequestSent(msg, TCP), 0.0)
        layer.handle(MessageReceived(make_response(msg, 200, to_tag="t"), TCP), 0.0)
    assert len(layer) == 0
    assert len(layer._scheduler) <= 64


NETWORK = {
    InviteClientTransaction: (Event.RECV_1XX, Event.RECV_2XX, Event.RECV_FINAL),
    NonInviteClientTransaction: (Event.RECV_1XX, Event.RECV_2XX, Event.RECV_FINAL),
    InviteServerTransaction: (Event.RECV_REQUEST, Event.RECV_ACK),
    NonInviteServerTransaction: (Event.RECV_REQUEST,),
}


@pytest.mark.parametrize("machine", list(NETWORK))
def test_tables_cover_every_network_input_and_arm_only_their_timers(
    machine: type[Transaction],
) -> None:
    live = [s for s in type(machine.INITIAL) if s is not machine.TERMINATED]
    for state, event in itertools.product(live, (*NETWORK[machine], Event.TRANSPORT_ERROR)):
        assert (state, event) in machine.TABLE, (state, event)
    armed = {t for timers in machine.ENTRY.values() for t in timers}
    handled = {trigger for _, trigger in machine.TABLE if isinstance(trigger, Timer)}
    assert armed == handled
    for state, _ in machine.TABLE:
        assert state is not machine.TERMINATED
        assert type(state) is type(machine.INITIAL)


_KINDS = st.sampled_from(["invite", "ack", "cancel", "options", "resp", "timer", "fail"])


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(_KINDS, st.integers(0, 2), st.sampled_from([100, 180, 200, 486])), max_size=40
    ),
    st.booleans(),
)
def test_network_and_timer_inputs_never_raise(
    steps: list[tuple[str, int, int]], reliable: bool
) -> None:
    layer = TransactionLayer()
    dest, transport = (TCP, "TCP") if reliable else (UDP, "UDP")
    now = 0.0
    sent: dict[int, Request] = {}
    for n in range(3):
        sent[n] = request("INVITE" if n else "MESSAGE", f"z9hG4bK-out{n}", transport)
        layer.handle(RequestSent(sent[n], dest), now)
    for kind, n, status in steps:
        now += 0.3
        branch = f"z9hG4bK-in{n}"
        match kind:
            case "invite" | "options" | "ack" | "cancel":
                layer.handle(MessageReceived(request(kind.upper(), branch, transport), dest), now)
            case "resp":
                resp = make_response(sent[n], status, to_tag=None if status == 100 else "t")
                layer.handle(MessageReceived(resp, dest), now)
            case "timer":
                now = layer.next_deadline() or now
                layer.handle(TimerFired(), now)
                deadline = layer.next_deadline()
                assert deadline is None or deadline > now
            case "fail":
                layer.handle(TransportFailed(client_key(sent[n])), now)
    # Whatever happened, only transactions waiting for someone else have no timer left.
    run_timers(layer, now + 1000.0)
    assert layer.next_deadline() is None
    waiting = {
        InviteClientState.PROCEEDING,
        InviteServerState.PROCEEDING,
        NonInviteServerState.TRYING,
        NonInviteServerState.PROCEEDING,
    }
    assert {layer.state(key) for key in layer._transactions} <= waiting
