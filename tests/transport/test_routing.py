"""Pure transport helpers: Via stamping (§18.2.1, RFC 3581), response routing (§18.2.2),
the lenient error response and the STUN keep-alive answer."""

from __future__ import annotations

import ipaddress
import struct
import zlib

import pytest

from sipushd.sip import Endpoint, Request, Response, make_response, parse_message
from sipushd.transport import response_destination, stamp_via
from sipushd.transport.limits import TransportLimits
from sipushd.transport.routing import normalize_host, replace_top_via
from sipushd.transport.wire import (
    STUN_MAGIC,
    error_response,
    is_keepalive,
    sanitize_reason,
    stun_binding_response,
)
from tests.transport.helpers import sip_request


def request(via: str, *, extra: str = "") -> Request:
    message = parse_message(sip_request(via=via, extra=extra))
    assert isinstance(message, Request)
    return message


def response_to(via: str) -> Response:
    return make_response(request(via), 200)


# -- stamp_via -------------------------------------------------------------------------


def test_matching_sent_by_without_rport_is_left_alone() -> None:
    original = request("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-1")
    assert stamp_via(original, "127.0.0.1", 40000) is original


def test_different_source_adds_received() -> None:
    stamped = stamp_via(request("SIP/2.0/UDP 10.0.0.7:5070;branch=z9hG4bK-1"), "192.0.2.1", 4000)
    top = stamped.top_via
    assert top.received == "192.0.2.1"
    assert top.rport is None
    assert top.branch == "z9hG4bK-1"


def test_empty_rport_gets_port_and_received_even_when_sent_by_matches() -> None:
    # RFC 3581 §4: received is added even when identical to sent-by.
    stamped = stamp_via(
        request("SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK-1"), "127.0.0.1", 4321
    )
    assert stamped.top_via.rport == "4321"
    assert stamped.top_via.received == "127.0.0.1"


def test_domain_sent_by_always_gets_received() -> None:
    stamped = stamp_via(request("SIP/2.0/TCP phone.example.org;branch=z9hG4bK-1"), "192.0.2.9", 1)
    assert stamped.top_via.received == "192.0.2.9"


def test_ipv6_sent_by_compared_as_address() -> None:
    original = request("SIP/2.0/UDP [0:0::1]:5070;branch=z9hG4bK-1")
    assert stamp_via(original, "::1", 5070) is original
    stamped = stamp_via(original, "::2", 5070)
    assert stamped.top_via.received == "::2"


def test_only_the_top_via_changes() -> None:
    via = (
        "SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bK-top, SIP/2.0/UDP 10.0.0.2;branch=z9hG4bK-2"
    )
    original = request(via, extra="Via: SIP/2.0/UDP 10.0.0.3;branch=z9hG4bK-3\r\n")
    stamped = stamp_via(original, "198.51.100.1", 7000)
    vias = stamped.vias
    assert [v.branch for v in vias] == ["z9hG4bK-top", "z9hG4bK-2", "z9hG4bK-3"]
    assert vias[0].received == "198.51.100.1" and vias[0].rport == "7000"
    assert vias[1].received is None and vias[2].received is None
    assert stamped.call_id == original.call_id and stamped.cseq == original.cseq


def test_replace_top_via_keeps_other_headers_in_place() -> None:
    original = request("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-1")
    replaced = replace_top_via(original.headers, "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-9")
    assert [name for name, _ in replaced] == [name for name, _ in original.headers]
    assert replaced.get("Via") == "SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK-9"


def test_stamped_request_round_trips() -> None:
    stamped = stamp_via(request("SIP/2.0/UDP 10.0.0.1;rport;branch=z9hG4bK-1"), "192.0.2.1", 9)
    again = parse_message(stamped.to_bytes())
    assert isinstance(again, Request)
    assert again.top_via.received == "192.0.2.1" and again.top_via.rport == "9"


# -- response_destination ---------------------------------------------------------------


def test_udp_response_goes_to_received_and_rport() -> None:
    stamped = stamp_via(
        request("SIP/2.0/UDP 10.0.0.1:5070;rport;branch=z9hG4bK-1"), "192.0.2.1", 4000
    )
    response = make_response(stamped, 200)
    assert response_destination(response) == Endpoint("udp", "192.0.2.1", 4000)


def test_udp_response_without_rport_goes_to_received_and_sent_by_port() -> None:
    response = response_to("SIP/2.0/UDP 10.0.0.1:5070;received=192.0.2.1;branch=z9hG4bK-1")
    assert response_destination(response) == Endpoint("udp", "192.0.2.1", 5070)


def test_udp_response_defaults_to_sent_by_and_5060() -> None:
    response = response_to("SIP/2.0/UDP 192.0.2.5;branch=z9hG4bK-1")
    assert response_destination(response) == Endpoint("udp", "192.0.2.5", 5060)


def test_udp_response_to_maddr() -> None:
    response = response_to("SIP/2.0/UDP 192.0.2.5:5090;maddr=192.0.2.77;branch=z9hG4bK-1")
    assert response_destination(response) == Endpoint("udp", "192.0.2.77", 5090)


def test_ipv6_response_host_has_no_brackets() -> None:
    response = response_to("SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK-1")
    assert response_destination(response) == Endpoint("udp", "2001:db8::1", 5070)


def test_reliable_response_keeps_the_flow_and_falls_back_to_sent_by_port() -> None:
    # RFC 3261 §18.2.2: same connection; if it is gone, received + sent-by port.
    source = Endpoint("tcp", "192.0.2.1", 49152, flow=7)
    stamped = stamp_via(request("SIP/2.0/TCP 10.0.0.1:5070;branch=z9hG4bK-1"), "192.0.2.1", 49152)
    destination = response_destination(make_response(stamped, 200), source)
    assert destination == Endpoint("tcp", "192.0.2.1", 5070, flow=7)


def test_tls_response_default_port_is_5061() -> None:
    source = Endpoint("tls", "192.0.2.1", 49152, flow=3)
    response = response_to("SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK-1")
    assert response_destination(response, source) == Endpoint("tls", "192.0.2.1", 5061, flow=3)


# -- lenient error response, keep-alives ---------------------------------------------


def test_error_response_copies_the_dialog_headers() -> None:
    data = sip_request(extra="Expires: soon\r\n").replace(b"Via:", b"v:")
    raw = error_response(data, 400, "Bad Expires\r\nInjected: yes")
    assert raw is not None
    response = parse_message(raw)
    assert isinstance(response, Response)
    assert (response.status, response.reason) == (400, "Bad Expires  Injected: yes")
    assert response.top_via.branch == "z9hG4bK-1"
    assert response.call_id == "call-1@test"
    assert response.cseq.method == "REGISTER"
    assert response.from_.tag == "a1"


def test_error_response_to_duplicated_dialog_headers_is_well_formed() -> None:
    # §8.2.6.2: the 400 for a request with two To fields must itself parse.
    data = sip_request(extra="To: <sip:other@example.org>\r\nVia: SIP/2.0/UDP 192.0.2.9\r\n")
    raw = error_response(data, 400, "Duplicate To")
    assert raw is not None
    response = parse_message(raw)
    assert isinstance(response, Response)
    assert response.headers.get_all("To") == [response.headers.get("To")]
    assert len(response.vias) == 2  # every Via is copied


@pytest.mark.parametrize(
    "data",
    [
        b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n",
        sip_request("ACK"),
        sip_request().replace(b"Call-ID: call-1@test\r\n", b""),
        b"\x16\x03\x01garbage",
        b"",
    ],
    ids=["response", "ack", "no-call-id", "binary", "empty"],
)
def test_error_response_impossible(data: bytes) -> None:
    assert error_response(data, 400, "bad") is None


def test_sanitize_reason_is_one_printable_line() -> None:
    assert sanitize_reason("a\r\nb\x00c") == "a  b c"
    assert sanitize_reason("\r\n") == "Bad Request"
    assert len(sanitize_reason("x" * 1000)) <= 120


@pytest.mark.parametrize("data", [b"\r\n\r\n", b"\r\n", b"\x00", b" \r\n"])
def test_keepalive_datagrams(data: bytes) -> None:
    assert is_keepalive(data)


def test_sip_is_not_a_keepalive() -> None:
    assert not is_keepalive(sip_request())


@pytest.mark.parametrize("host", ["192.0.2.33", "2001:db8::5"])
def test_stun_binding_response_carries_xor_mapped_address(host: str) -> None:
    transaction = bytes(range(12))
    binding = struct.pack("!HH", 0x0001, 0) + STUN_MAGIC + transaction
    answer = stun_binding_response(binding, host, 40000)
    assert answer is not None
    msg_type, length = struct.unpack_from("!HH", answer, 0)
    assert msg_type == 0x0101 and answer[4:20] == STUN_MAGIC + transaction
    assert length == len(answer) - 20
    attr_type, attr_len, _, family, xport = struct.unpack_from("!HHBBH", answer, 20)
    assert attr_type == 0x0020
    assert xport ^ 0x2112 == 40000
    xaddr = answer[28 : 24 + attr_len]
    mask = STUN_MAGIC + transaction
    packed = bytes(a ^ b for a, b in zip(xaddr, mask, strict=False))
    assert ipaddress.ip_address(packed) == ipaddress.ip_address(host)
    assert family == (1 if ":" not in host else 2)


def test_stun_fingerprint_is_answered_with_a_fingerprint() -> None:
    # RFC 5389 §15.5: CRC-32 over the message before the attribute, XOR 0x5354554E.
    body = struct.pack("!HHI", 0x8028, 4, 0)
    binding = struct.pack("!HH", 0x0001, len(body)) + STUN_MAGIC + bytes(12) + body
    answer = stun_binding_response(binding, "192.0.2.1", 5060)
    assert answer is not None
    attr_type, attr_len, crc = struct.unpack("!HHI", answer[-8:])
    assert (attr_type, attr_len) == (0x8028, 4)
    assert crc == (zlib.crc32(answer[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
    assert struct.unpack_from("!H", answer, 2)[0] == len(answer) - 20


def test_stun_other_than_binding_request_is_not_answered() -> None:
    indication = struct.pack("!HH", 0x0011, 0) + STUN_MAGIC + bytes(12)
    assert stun_binding_response(indication, "192.0.2.1", 1) is None
    assert stun_binding_response(b"\x00\x01\x00\x00junk", "192.0.2.1", 1) is None


def test_normalize_host() -> None:
    assert normalize_host("[0:0::1]") == "::1"
    assert normalize_host("Example.ORG") == "example.org"


def test_limits_reject_nonsense() -> None:
    with pytest.raises(ValueError):
        TransportLimits(idle_timeout=0)
    with pytest.raises(ValueError):
        TransportLimits(max_buffer=0)
