"""SIP requests and responses (RFC 3261 §7) with cached typed header accessors.

Messages are immutable values (`sipushd.sip.value.Value`). Typed accessors
parse on first use and cache the result in a private field that takes no part
in equality; a malformed value raises
SipParseError. Content-Length is framing, not content: the parser drops it
from ``headers`` and ``to_bytes`` always writes the correct one (§20.14).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, cast

from sipushd.sip import _abnf
from sipushd.sip.errors import SipParseError
from sipushd.sip.headers import (
    Challenge,
    Credentials,
    CSeq,
    Headers,
    NameAddr,
    Via,
    parse_challenge,
    parse_contact_field,
    parse_credentials,
    parse_cseq,
    parse_name_addr,
    parse_uint,
    parse_via,
    serialise_fields,
    split_list,
)
from sipushd.sip.status import reason_phrase
from sipushd.sip.uri import SipUri
from sipushd.sip.value import Value

_MISSING = object()


class _Message(Value):
    """Typed accessors shared by Request and Response."""

    headers: Headers
    body: bytes
    _cache: dict[str, object]  # parsed headers and the wire form; not part of the value

    def _uint(self, key: str) -> int | None:
        """An optional scalar header (lowercase `key`), parsed once."""
        cache = self._cache
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = cache[key] = self._optional_uint(key)
        return cast(int | None, value)

    def _addresses(self, key: str) -> tuple[NameAddr, ...]:
        """Every name-addr of a list header (lowercase `key`), parsed once."""
        cache = self._cache
        value = cache.get(key, _MISSING)
        if value is _MISSING:
            value = cache[key] = self._name_addrs(key)
        return cast(tuple[NameAddr, ...], value)

    def _single(self, key: str, name: str) -> str:
        fields = self.headers._by_key(key)
        if not fields:
            raise SipParseError(f"missing {name} header")
        if len(fields) > 1:
            raise SipParseError(f"more than one {name} header")
        return fields[0]

    def _name_addrs(self, key: str) -> tuple[NameAddr, ...]:
        return tuple(parse_name_addr(v) for f in self.headers._by_key(key) for v in split_list(f))

    @property
    def vias(self) -> list[Via]:
        """Every Via value, top first (RFC 3261 §20.42)."""
        return list(self._vias())

    def _vias(self) -> tuple[Via, ...]:
        vias = self._cache.get("via")
        if vias is None:
            vias = self._cache["via"] = tuple(
                parse_via(v) for f in self.headers._by_key("via") for v in split_list(f)
            )
        return cast(tuple[Via, ...], vias)

    @property
    def top_via(self) -> Via:
        """The topmost Via; SipParseError if there is none."""
        vias = self._vias()
        if not vias:
            raise SipParseError("missing Via header")
        return vias[0]

    @property
    def from_(self) -> NameAddr:
        """The From header (RFC 3261 §20.20)."""
        value = self._cache.get("from")
        if value is None:
            value = self._cache["from"] = parse_name_addr(self._single("from", "From"))
        return cast(NameAddr, value)

    @property
    def to(self) -> NameAddr:
        """The To header (RFC 3261 §20.39)."""
        value = self._cache.get("to")
        if value is None:
            value = self._cache["to"] = parse_name_addr(self._single("to", "To"))
        return cast(NameAddr, value)

    @property
    def call_id(self) -> str:
        """The Call-ID (RFC 3261 §20.8)."""
        value = self._cache.get("call-id")
        if value is None:
            value = self._single("call-id", "Call-ID")
            if _abnf.CALL_ID_RE.fullmatch(value) is None:
                raise SipParseError(f"bad Call-ID: {value!r}")
            self._cache["call-id"] = value
        return cast(str, value)

    @property
    def cseq(self) -> CSeq:
        """The CSeq header (RFC 3261 §20.16)."""
        value = self._cache.get("cseq")
        if value is None:
            value = self._cache["cseq"] = parse_cseq(self._single("cseq", "CSeq"))
        return cast(CSeq, value)

    @property
    def max_forwards(self) -> int | None:
        """Max-Forwards (RFC 3261 §20.22), None if absent."""
        return self._uint("max-forwards")

    def _optional_uint(self, key: str) -> int | None:
        if not self.headers._by_key(key):
            return None
        return parse_uint(self._single(key, key), key)

    @property
    def contacts(self) -> list[NameAddr]:
        """Contact values ([] for "Contact: *", RFC 3261 §10.2.2)."""
        return list(self._contacts()[0])

    @property
    def is_star_contact(self) -> bool:
        """True for "Contact: *" (remove all bindings, RFC 3261 §10.2.2)."""
        return self._contacts()[1]

    def _contacts(self) -> tuple[tuple[NameAddr, ...], bool]:
        value = self._cache.get("contact")
        if value is None:
            value = self._cache["contact"] = self._parse_contacts()
        return cast(tuple[tuple[NameAddr, ...], bool], value)

    def _parse_contacts(self) -> tuple[tuple[NameAddr, ...], bool]:
        fields = [parse_contact_field(f) for f in self.headers._by_key("contact")]
        if None in fields:
            # RFC 3261 §10.3 step 6: "*" must be the only Contact value.
            if len(fields) > 1:
                raise SipParseError("Contact '*' mixed with other contacts")
            return (), True
        return tuple(c for f in fields if f is not None for c in f), False

    @property
    def routes(self) -> list[NameAddr]:
        """Route values (RFC 3261 §20.34)."""
        return list(self._addresses("route"))

    @property
    def record_routes(self) -> list[NameAddr]:
        """Record-Route values (RFC 3261 §20.30)."""
        return list(self._addresses("record-route"))

    @property
    def paths(self) -> list[NameAddr]:
        """Path values (RFC 3327)."""
        return list(self._addresses("path"))

    @property
    def expires(self) -> int | None:
        """The Expires header in seconds (RFC 3261 §20.19), None if absent."""
        return self._uint("expires")

    @property
    def require(self) -> list[str]:
        """Require option tags (RFC 3261 §20.32)."""
        return self.headers.values("Require")

    @property
    def proxy_require(self) -> list[str]:
        """Proxy-Require option tags (RFC 3261 §20.29)."""
        return self.headers.values("Proxy-Require")

    @property
    def supported(self) -> list[str]:
        """Supported option tags (RFC 3261 §20.37)."""
        return self.headers.values("Supported")

    @property
    def content_type(self) -> str | None:
        """The Content-Type value as is, None if absent."""
        return self.headers.get("Content-Type")

    @property
    def authorization(self) -> list[Credentials]:
        """Authorization values (RFC 3261 §20.7)."""
        return [parse_credentials(v) for v in self.headers.get_all("Authorization")]

    @property
    def proxy_authorization(self) -> list[Credentials]:
        """Proxy-Authorization values (RFC 3261 §20.28)."""
        return [parse_credentials(v) for v in self.headers.get_all("Proxy-Authorization")]

    @property
    def www_authenticate(self) -> list[Challenge]:
        """WWW-Authenticate values (RFC 3261 §20.44)."""
        return [parse_challenge(v) for v in self.headers.get_all("WWW-Authenticate")]

    @property
    def proxy_authenticate(self) -> list[Challenge]:
        """Proxy-Authenticate values (RFC 3261 §20.27)."""
        return [parse_challenge(v) for v in self.headers.get_all("Proxy-Authenticate")]

    def _start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise: start line, header lines, a correct Content-Length, CRLF, body."""
        cached = self._cache.get("bytes")
        if cached is not None:
            return cast(bytes, cached)
        head = (
            f"{self._start_line()}\r\n{serialise_fields(self.headers, 'content-length')}"
            f"Content-Length: {len(self.body)}\r\n\r\n"
        )
        data = head.encode() + self.body
        self._cache["bytes"] = data
        return data


class Request(_Message):
    """A SIP request (RFC 3261 §7.1)."""

    _FIELDS = ("method", "uri", "headers", "body")

    def __init__(self, method: str, uri: SipUri, headers: Headers, body: bytes = b"") -> None:
        self.method: Final = method
        self.uri: Final = uri
        self.headers = headers
        self.body = body
        self._cache = {}

    def _start_line(self) -> str:
        return f"{self.method} {self.uri} SIP/2.0"

    @property
    def transaction_branch(self) -> str | None:
        """Branch of the top Via (RFC 3261 §17.2.3), None without Via or branch."""
        vias = self._vias()
        return vias[0].branch if vias else None


class Response(_Message):
    """A SIP response (RFC 3261 §7.2)."""

    _FIELDS = ("status", "reason", "headers", "body")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes = b"") -> None:
        self.status: Final = status
        self.reason: Final = reason
        self.headers = headers
        self.body = body
        self._cache = {}

    def _start_line(self) -> str:
        return f"SIP/2.0 {self.status} {self.reason}"


def make_response(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> Response:
    """Build a response to ``request`` copying Via, From, To, Call-ID, CSeq (§8.2.6.2)."""
    req = request.headers
    vias = req._by_key("via")
    to = req.get("To") or ""
    if to_tag is not None and request.to.tag is None:
        # An appended parameter is a header parameter in both name-addr and
        # addr-spec form (RFC 3261 §20).
        to = f"{to};tag={to_tag}"
        if _abnf.bad_value_chars(to_tag):
            raise ValueError("To tag contains CR, LF or NUL")
    # The copied values passed the parser's checks already; only `headers` is new.
    items = [
        *[("Via", v) for v in vias],
        ("From", req.get("From") or ""),
        ("To", to),
        ("Call-ID", req.get("Call-ID") or ""),
        ("CSeq", req.get("CSeq") or ""),
    ]
    keys = [*["via"] * len(vias), "from", "to", "call-id", "cseq"]
    if headers:
        extra = Headers(headers)
        items += extra._items
        keys += extra._keys
    return Response(
        status,
        reason_phrase(status) if reason is None else reason,
        Headers._trusted(tuple(items), tuple(keys)),
        body,
    )
