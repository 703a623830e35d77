"""Bytes to messages: one datagram (parse_message) or a byte stream (StreamParser).

Rules: malformed input raises SipParseError and nothing else; its status_hint
is the response to send (400, 413, 505). Headers the rest of the stack relies
on (Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Contact) are
parsed and validated here, so a message that comes out is usable.
"""

from __future__ import annotations

import re

from sipushd.sip import _abnf
from sipushd.sip.errors import SipParseError
from sipushd.sip.headers import NAME_CACHE, Headers, canonical_name, parse_uint
from sipushd.sip.message import Request, Response
from sipushd.sip.uri import parse_uri

DEFAULT_MAX_MESSAGE_SIZE = 65536

Message = Request | Response


def parse_message(
    data: bytes, *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
) -> Request | Response:
    """Parse one datagram into a message; raises SipParseError only."""
    try:
        return _parse_datagram(data, max_message_size)
    except SipParseError:
        raise
    except Exception as exc:  # any internal failure on bad input is a parse error
        raise SipParseError(f"malformed message: {exc!r}") from exc


def _parse_datagram(data: bytes, max_message_size: int) -> Message:
    if len(data) > max_message_size:
        raise SipParseError(f"message larger than {max_message_size} bytes", 413)
    start = 0
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    while data.startswith(b"\r\n", start):
        start += 2
    end = data.find(b"\r\n\r\n", start)
    if end < 0:
        raise SipParseError("no empty line after the headers")
    start_line, headers, length = parse_head(data[start:end])
    body_start = end + 4
    if length is None:
        # RFC 3261 §18.3: on datagrams the body runs to the end of the packet.
        body = data[body_start:]
    else:
        if length > max_message_size:
            raise SipParseError(f"Content-Length {length} too large", 413)
        if body_start + length > len(data):
            raise SipParseError("body shorter than Content-Length")
        # RFC 3261 §18.3: octets after Content-Length are discarded.
        body = data[body_start : body_start + length]
    return build_message(start_line, headers, body)


def parse_head(head: bytes) -> tuple[str, Headers, int | None]:
    """Split a message head into start line, headers and Content-Length (if any)."""
    if head.translate(None, _abnf.HEAD_OCTETS):
        raise SipParseError("control character in message head")
    text = head.decode("utf-8")
    if "\r\n " in text or "\r\n\t" in text:
        # RFC 3261 §7.3.1: a line starting with whitespace continues the
        # previous one; the fold is equivalent to a single SP.
        text = _FOLD_RE.sub(" ", text)
    lines = text.split("\r\n")
    crlfs = len(lines) - 1
    if text.count("\r") != crlfs or text.count("\n") != crlfs:
        # A bare CR or LF would let a value smuggle a header line.
        raise SipParseError("bare CR or LF in message head")
    items: list[tuple[str, str]] = []
    keys: list[str] = []
    index: dict[str, tuple[str, ...]] = {}
    lengths: list[str] = []
    known = NAME_CACHE.get
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise SipParseError(f"header line without ':': {line[:40]!r}")
        display, key = known(name) or canonical_name(name.rstrip(" \t"))
        value = value.strip(" \t")
        if key == "content-length":
            lengths.append(value)
            continue
        items.append((display, value))
        keys.append(key)
        found = index.get(key)
        index[key] = (value,) if found is None else (*found, value)
    length = _content_length(lengths) if lengths else None
    return lines[0], Headers._trusted(tuple(items), tuple(keys), index), length


_FOLD_RE = re.compile(r"[ \t]*\r\n[ \t]+")


def _content_length(values: list[str]) -> int:
    # RFC 3261 §20.14 / §25: one non-negative decimal value; conflicting
    # duplicates make the framing ambiguous.
    if len(values) == 1:
        return parse_uint(values[0], "Content-Length")
    found = {parse_uint(v, "Content-Length") for v in values}
    if len(found) > 1:
        raise SipParseError("conflicting Content-Length headers")
    return found.pop()


def build_message(start_line: str, headers: Headers, body: bytes) -> Message:
    """Build and validate a message from its parsed parts."""
    msg: Message
    if start_line[:4].upper() == "SIP/":
        m = _abnf.STATUS_LINE_RE.fullmatch(start_line)
        if m is None:
            raise SipParseError(
                f"bad status line: {start_line[:80]!r}", _version_status(start_line)
            )
        _check_version(m.group(1))
        msg = Response(int(m.group(2)), m.group(3) or "", headers, body)
    else:
        m = _abnf.REQUEST_LINE_RE.fullmatch(start_line)
        if m is None:
            raise SipParseError(f"bad request line: {start_line[:80]!r}")
        method, uri_text, version = m.groups()
        _check_version(version)
        msg = Request(method, parse_uri(uri_text), headers, body)
    _validate(msg)
    return msg


def _version_status(start_line: str) -> int:
    version = start_line.partition(" ")[0]
    if _abnf.SIP_VERSION_RE.fullmatch(version) and version.upper() != "SIP/2.0":
        return 505
    return 400


def _check_version(version: str) -> None:
    if version.upper() != "SIP/2.0":
        # RFC 3261 §8.2.2.3 / §21.5.25: other versions get 505.
        status = 505 if _abnf.SIP_VERSION_RE.fullmatch(version) else 400
        raise SipParseError(f"unsupported SIP version {version!r}", status)


def _validate(msg: Message) -> None:
    # RFC 3261 §8.1.1: the mandatory headers; parsing them here means bad
    # values are rejected with 400 instead of failing deep in the stack.
    if not msg._vias():
        raise SipParseError("missing Via header")
    cseq = msg.cseq
    if isinstance(msg, Request) and cseq.method != msg.method:
        # RFC 3261 §8.1.1.5: the CSeq method matches the request method.
        raise SipParseError("CSeq method does not match the request method")
    _ = msg.from_, msg.to, msg.call_id, msg.max_forwards, msg._contacts()


class StreamParser:
    """Incremental parser for TCP/TLS byte streams (RFC 3261 §18.3).

    Content-Length is mandatory on streams. CRLF keep-alives between messages
    (RFC 5626 §3.5.1) are skipped and counted in ``keepalives``. After a
    SipParseError the stream is unusable: every later feed raises again, and
    messages completed earlier in the failing feed call are not returned
    (the caller answers 400 and closes the connection, RFC 3261 §18.3).
    """

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        self.max_message_size = max_message_size
        self.keepalives = 0
        self._buf = bytearray()
        self._scanned = 0
        self._pending: tuple[str, Headers, int, int] | None = None
        self._error: SipParseError | None = None

    def feed(self, data: bytes) -> list[Request | Response]:
        """Add received bytes; return every message now complete."""
        if self._error is not None:
            raise SipParseError(f"stream already failed: {self._error}", self._error.status_hint)
        self._buf += data
        out: list[Message] = []
        try:
            while (msg := self._next()) is not None:
                out.append(msg)
        except SipParseError as failed:
            self._error = failed
            raise
        except Exception as exc:  # any internal failure on bad input is a parse error
            self._error = SipParseError(f"malformed message: {exc!r}")
            raise self._error from exc
        return out

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs before a start line; False if more bytes are needed to decide."""
        buf = self._buf
        while buf[:1] == b"\r":
            if buf[:4] == b"\r\n\r\n":
                self.keepalives += 1
                del buf[:4]
            elif len(buf) < 4 and b"\r\n\r\n".startswith(buf):
                return False
            elif buf[:2] == b"\r\n":
                del buf[:2]
            else:
                return True
        return True

    def _next(self) -> Message | None:
        buf = self._buf
        if self._pending is None:
            if not self._skip_keepalives():
                return None
            end = buf.find(b"\r\n\r\n", max(0, self._scanned - 3))
            if end < 0:
                self._scanned = len(buf)
                if len(buf) > self.max_message_size:
                    raise SipParseError("message head too large", 413)
                return None
            self._scanned = 0
            start_line, headers, length = parse_head(bytes(buf[:end]))
            if length is None:
                raise SipParseError("missing Content-Length on a stream transport")
            if end + 4 + length > self.max_message_size:
                raise SipParseError("message too large", 413)
            self._pending = (start_line, headers, end + 4, length)
        start_line, headers, body_start, length = self._pending
        total = body_start + length
        if len(buf) < total:
            return None
        body = bytes(buf[body_start:total])
        del buf[:total]
        self._pending = None
        return build_message(start_line, headers, body)
