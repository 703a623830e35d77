"""Byte-level answers for input that is not a parseable SIP message.

- `error_response`: a stateless 4xx/5xx built by a lenient scan of a malformed request's
  head, so a sender learns why its request was refused (RFC 3261 §8.2, §18.3).
- `is_keepalive` / `stun_binding_response`: RFC 5626 §4.4.2 keep-alives on UDP; CRLF is
  ignored, a STUN Binding Request (RFC 5389) gets a Binding Success Response.
"""

from __future__ import annotations

import ipaddress
import struct
import zlib

from sipushd.sip import Headers, Response

# RFC 3261 §7.3.3: compact forms of the headers a response must copy.
_COPIED = {
    b"via": "Via",
    b"v": "Via",
    b"from": "From",
    b"f": "From",
    b"to": "To",
    b"t": "To",
    b"call-id": "Call-ID",
    b"i": "Call-ID",
    b"cseq": "CSeq",
}
_REQUIRED = frozenset(_COPIED.values())
_MAX_REASON = 120

STUN_MAGIC = b"\x21\x12\xa4\x42"
_STUN_BINDING_REQUEST = 0x0001
_STUN_BINDING_SUCCESS = 0x0101
_STUN_XOR_MAPPED_ADDRESS = 0x0020
_STUN_FINGERPRINT = 0x8028
_STUN_FINGERPRINT_XOR = 0x5354554E


def sanitize_reason(text: str) -> str:
    """Make an error text safe for a Reason-Phrase (printable, one line, bounded)."""
    cleaned = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return cleaned[:_MAX_REASON] or "Bad Request"


def error_response(data: bytes, status: int, reason: str) -> bytes | None:
    """Serialise `status reason` for the request at the start of `data`, or None if impossible.

    Only requests are answered, never ACK (RFC 3261 §17.2.1) or a response; Via, From, To,
    Call-ID and CSeq are copied as found (RFC 3261 §8.2.6.2) and must all be present.
    """
    head = data.lstrip(b"\r\n").split(b"\r\n\r\n", 1)[0]
    lines = head.split(b"\r\n")
    start = lines[0]
    if not start or start.startswith(b"SIP/") or start.startswith(b"ACK ") or b"SIP/" not in start:
        return None
    fields: list[tuple[str, str]] = []
    kept = False  # whether the previous field line was copied
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            # RFC 3261 §7.3.1: folded continuation of the previous field.
            if kept:
                name, value = fields[-1]
                fields[-1] = (name, value + " " + _text(line.strip()))
            continue
        raw_name, colon, raw_value = line.partition(b":")
        canonical = _COPIED.get(raw_name.strip().lower())
        # Only Via may repeat; a second From/To/Call-ID/CSeq would make the 400 malformed too.
        kept = bool(colon) and canonical is not None
        if kept and canonical != "Via" and any(name == canonical for name, _ in fields):
            kept = False
        if kept:
            assert canonical is not None
            fields.append((canonical, _text(raw_value.strip())))
    present = {name for name, _ in fields}
    if present != _REQUIRED or any(not value for _, value in fields):
        return None
    cseq = next(value for name, value in fields if name == "CSeq")
    if cseq.upper().endswith("ACK"):
        return None
    response = Response(status=status, reason=sanitize_reason(reason), headers=Headers(fields))
    return response.to_bytes()


def _text(value: bytes) -> str:
    return value.decode("utf-8", errors="replace").replace("\ufffd", "?")


def is_keepalive(data: bytes) -> bool:
    """True for a datagram made only of CR/LF/space (RFC 5626 §4.4.1 CRLF keep-alive)."""
    return not data.strip(b"\r\n \t\x00")


def is_stun(data: bytes) -> bool:
    """True for something shaped like a STUN message (RFC 5389 §6: magic cookie)."""
    return len(data) >= 20 and data[0] < 2 and data[4:8] == STUN_MAGIC


def stun_binding_response(data: bytes, host: str, port: int) -> bytes | None:
    """Answer a STUN Binding Request with the source address (RFC 5389 §7.3.1), else None."""
    if not is_stun(data):
        return None
    msg_type, length = struct.unpack_from("!HH", data, 0)
    if msg_type != _STUN_BINDING_REQUEST or 20 + length > len(data):
        return None
    transaction = data[8:20]
    try:
        packed = ipaddress.ip_address(host.partition("%")[0]).packed
    except ValueError:
        return None
    # RFC 5389 §15.2: XOR-MAPPED-ADDRESS hides the address behind the cookie (+ transaction).
    mask = STUN_MAGIC + transaction
    xaddr = bytes(a ^ b for a, b in zip(packed, mask, strict=False))
    family = 0x01 if len(packed) == 4 else 0x02
    value = struct.pack("!BBH", 0, family, port ^ 0x2112) + xaddr
    attrs = struct.pack("!HH", _STUN_XOR_MAPPED_ADDRESS, len(value)) + value
    if _has_fingerprint(data, 20 + length):
        attrs += _fingerprint(transaction, attrs)
    return struct.pack("!HH", _STUN_BINDING_SUCCESS, len(attrs)) + STUN_MAGIC + transaction + attrs


def _has_fingerprint(data: bytes, end: int) -> bool:
    offset = 20
    while offset + 4 <= end:
        attr_type, attr_len = struct.unpack_from("!HH", data, offset)
        if attr_type == _STUN_FINGERPRINT:
            return True
        offset += 4 + ((attr_len + 3) & ~3)
    return False


def _fingerprint(transaction: bytes, attrs: bytes) -> bytes:
    # RFC 5389 §15.5: CRC-32 of the message up to this attribute, length counting it.
    header = struct.pack("!HH", _STUN_BINDING_SUCCESS, len(attrs) + 8) + STUN_MAGIC + transaction
    crc = (zlib.crc32(header + attrs) ^ _STUN_FINGERPRINT_XOR) & 0xFFFFFFFF
    return struct.pack("!HHI", _STUN_FINGERPRINT, 4, crc)
