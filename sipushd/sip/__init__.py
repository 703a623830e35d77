"""The SIP message layer: parse and serialise messages, URIs and headers (RFC 3261).

Pure and stdlib-only: bytes in, frozen objects out; malformed input raises
SipParseError. No I/O, clock or logging.
"""

from sipushd.sip.addr import Endpoint
from sipushd.sip.errors import SipParseError
from sipushd.sip.headers import Challenge, Credentials, CSeq, Headers, NameAddr, Via
from sipushd.sip.message import Request, Response, make_response
from sipushd.sip.parser import StreamParser, parse_message
from sipushd.sip.status import reason_phrase
from sipushd.sip.uri import SipUri, parse_uri

__all__ = [
    "CSeq",
    "Challenge",
    "Credentials",
    "Endpoint",
    "Headers",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamParser",
    "Via",
    "make_response",
    "parse_message",
    "parse_uri",
    "reason_phrase",
]
