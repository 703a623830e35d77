"""The header container and typed header values (RFC 3261 §7.3, §20, §25).

``Headers`` is immutable, ordered, case-insensitive and keeps duplicates;
compact forms (RFC 3261 §7.3.3) are expanded to canonical names. Typed values
(Via, NameAddr, CSeq, Credentials, Challenge) are frozen dataclasses whose
``__str__`` is the header field value. Typed parsers raise SipParseError only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from sipushd.sip import _abnf
from sipushd.sip._memo import Memo
from sipushd.sip.errors import SipParseError
from sipushd.sip.uri import Params, SipUri, parse_port, parse_uri, set_param
from sipushd.sip.value import Value

MAX_UINT32 = 2**32 - 1

# RFC 3261 §7.3.3 and the IANA registry: compact form -> canonical name.
COMPACT_FORMS: dict[str, str] = {
    "i": "Call-ID",
    "m": "Contact",
    "f": "From",
    "t": "To",
    "v": "Via",
    "l": "Content-Length",
    "c": "Content-Type",
    "k": "Supported",
    "s": "Subject",
    "e": "Content-Encoding",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "x": "Session-Expires",
    "y": "Identity",
    "a": "Accept-Contact",
    "b": "Referred-By",
    "d": "Request-Disposition",
    "j": "Reject-Contact",
    "n": "Identity-Info",
}
_KNOWN_NAMES = (
    *("Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow"),
    *("Authentication-Info", "Authorization", "Call-Info", "Content-Disposition"),
    *("Content-Language", "CSeq", "Date", "Error-Info", "Expires", "Feature-Caps"),
    *("In-Reply-To", "Max-Forwards", "Min-Expires", "MIME-Version", "Organization", "Path"),
    *("Priority", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Require", "Reason"),
    *("Record-Route", "Reply-To", "Require", "Retry-After", "Route", "Server", "Timestamp"),
    *("Unsupported", "User-Agent", "Warning", "WWW-Authenticate"),
    *COMPACT_FORMS.values(),
)
# lowercase name (or compact form) -> (canonical display name, lookup key)
_CANONICAL: dict[str, tuple[str, str]] = {n.lower(): (n, n.lower()) for n in _KNOWN_NAMES}
_CANONICAL.update({c: (n, n.lower()) for c, n in COMPACT_FORMS.items()})
# raw header name -> (display name, key), for names already seen and validated
NAME_CACHE: dict[str, tuple[str, str]] = {}


def canonical_name(name: str) -> tuple[str, str]:
    """Return (display name, lowercase key) for a header name; ValueError if not a token."""
    cached = NAME_CACHE.get(name)
    if cached is not None:
        return cached
    if _abnf.TOKEN_RE.fullmatch(name) is None:
        raise SipParseError(f"header name is not a token: {name!r}")
    lower = name.lower()
    result = _CANONICAL.get(lower) or (name, lower)
    if len(NAME_CACHE) < 4096:
        NAME_CACHE[name] = result
    return result


def _key(name: str) -> str:
    lower = name.lower()
    known = _CANONICAL.get(lower)
    return known[1] if known else lower


class Headers:
    """Immutable ordered header fields; lookups ignore case and expand compact forms."""

    __slots__ = ("_index", "_items", "_keys")

    _items: tuple[tuple[str, str], ...]
    _keys: tuple[str, ...]
    # Field values by key, as tuples: the garbage collector stops tracking a tuple of
    # strings, where it would scan a list on every pass while the message lives.
    _index: dict[str, tuple[str, ...]] | None

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        out: list[tuple[str, str]] = []
        keys: list[str] = []
        for name, value in items:
            display, key = canonical_name(name)
            if _abnf.bad_value_chars(value):
                raise ValueError(f"header {name} value contains CR, LF or NUL")
            out.append((display, value))
            keys.append(key)
        self._items = tuple(out)
        self._keys = tuple(keys)
        self._index = None

    @classmethod
    def _trusted(
        cls,
        items: tuple[tuple[str, str], ...],
        keys: tuple[str, ...],
        index: dict[str, tuple[str, ...]] | None = None,
    ) -> Headers:
        # Used by the parser, which has already validated and canonicalised names.
        obj = cls()  # compiled classes cannot be made with __new__ alone
        obj._items = items
        obj._keys = keys
        obj._index = index
        return obj

    def _lookup(self) -> dict[str, tuple[str, ...]]:
        index = self._index
        if index is None:
            index = {}
            for key, (_, value) in zip(self._keys, self._items, strict=True):
                found = index.get(key)
                index[key] = (value,) if found is None else (*found, value)
            self._index = index
        return index

    def _by_key(self, key: str) -> tuple[str, ...]:
        # Field values for a lowercase canonical key, without copying.
        return self._lookup().get(key, ())

    def get(self, name: str) -> str | None:
        """First field value of ``name``, or None."""
        found = self._lookup().get(_key(name))
        return found[0] if found else None

    def get_all(self, name: str) -> list[str]:
        """Every field value of ``name``, in order, as is."""
        return list(self._lookup().get(_key(name), ()))

    def values(self, name: str) -> list[str]:
        """Comma-separated elements across all ``name`` fields (quotes and <> respected)."""
        out: list[str] = []
        for value in self._lookup().get(_key(name), ()):
            out.extend(v for v in split_list(value, strict=False) if v)
        return out

    def add(self, name: str, value: str) -> Headers:
        """Copy with a field appended."""
        return Headers((*self._items, (name, value)))

    def prepend(self, name: str, value: str) -> Headers:
        """Copy with a field inserted first."""
        return Headers(((name, value), *self._items))

    def set(self, name: str, value: str) -> Headers:
        """Copy where ``name`` has exactly one field (at the first one's position)."""
        key = _key(name)
        out: list[tuple[str, str]] = []
        done = False
        for k, item in zip(self._keys, self._items, strict=True):
            if k != key:
                out.append(item)
            elif not done:
                out.append((name, value))
                done = True
        if not done:
            out.append((name, value))
        return Headers(out)

    def remove(self, name: str) -> Headers:
        """Copy without any ``name`` field."""
        key = _key(name)
        items = tuple(i for k, i in zip(self._keys, self._items, strict=True) if k != key)
        keys = tuple(k for k in self._keys if k != key)
        return Headers._trusted(items, keys)

    def keys(self) -> tuple[str, ...]:
        """Lowercase canonical names, one per field, in order."""
        return self._keys

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and _key(name) in self._lookup()

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._keys == other._keys and all(
            a[1] == b[1] for a, b in zip(self._items, other._items, strict=True)
        )

    def __hash__(self) -> int:
        return hash((self._keys, tuple(v for _, v in self._items)))

    def __repr__(self) -> str:
        return f"Headers({list(self._items)!r})"


def serialise_fields(headers: Headers, skip: str) -> str:
    """Serialise every field except those with lowercase key ``skip`` as header lines."""
    if skip not in headers._keys:  # a scan of the keys: no index built for this
        return "".join([f"{name}: {value}\r\n" for name, value in headers._items])
    return "".join(
        [
            f"{name}: {value}\r\n"
            for key, (name, value) in zip(headers._keys, headers._items, strict=True)
            if key != skip
        ]
    )


def split_list(value: str, *, strict: bool = True) -> list[str]:
    """Split a list header value on commas outside quotes and <>; elements stripped."""
    if "," not in value:
        # One element: a quote or '<' left open is caught by the element's own parser.
        parts = [value.strip(" \t")]
    elif '"' not in value and "<" not in value:
        parts = [p.strip(" \t") for p in value.split(",")]
    else:
        parts = _split_quoted(value, strict)
    if strict and any(not p for p in parts):
        raise SipParseError(f"empty element in list {value!r}")
    return parts


def _split_quoted(value: str, strict: bool) -> list[str]:
    parts: list[str] = []
    pos = 0
    end = len(value)
    match = _abnf.LIST_ELEMENT_RE.match
    while True:
        m = match(value, pos)
        stop = m.end() if m else pos
        if stop < end and value[stop] != ",":
            # An unterminated quoted string or '<'.
            if strict:
                raise SipParseError(f"unterminated quote or '<' in {value!r}")
            stop = end
        parts.append(value[pos:stop].strip(" \t"))
        if stop >= end:
            return parts
        pos = stop + 1


def parse_uint(text: str, what: str) -> int:
    """Parse a decimal integer in 0..2**32-1 (RFC 3261 §25 scalars); SipParseError if not."""
    text = text.strip(" \t")
    if not (text.isascii() and text.isdigit()) or len(text) > 10:
        raise SipParseError(f"bad {what}: {text!r}")
    value = int(text)
    if value > MAX_UINT32:
        raise SipParseError(f"{what} out of range: {text}")
    return value


def unquote(text: str) -> str:
    """Strip the quotes of a quoted-string and resolve quoted-pairs; others as is."""
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        inner = text[1:-1]
        return _abnf.QUOTED_PAIR_RE.sub(r"\1", inner) if "\\" in inner else inner
    return text


def quote(text: str) -> str:
    """Quote ``text`` as a quoted-string."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# The common form of a parameter run: no whitespace outside quotes, and quoted values
# (`+sip.instance="<urn:uuid:...>"`) without ';' or escapes, so splitting on ';' is exact.
_PLAIN_PARAMS_RE = re.compile(rf'(?:;{_abnf.TOKEN}(?:=(?:[^ \t;,"]+|"[^"\\;]*"))?)+')


def parse_params(text: str, pos: int = 0) -> Params:
    """Parse ``*( SEMI generic-param )`` from ``pos`` to the end; names lowercased."""
    if pos >= len(text):
        return ()
    if _PLAIN_PARAMS_RE.fullmatch(text, pos) is not None:
        plain: list[tuple[str, str | None]] = []
        for item in text[pos + 1 :].split(";"):
            name, eq, value = item.partition("=")
            plain.append((name.lower(), value if eq else None))
        return tuple(plain)
    return _generic_params(text, pos)


def _generic_params(text: str, pos: int) -> Params:
    out: list[tuple[str, str | None]] = []
    end = len(text.rstrip(" \t"))
    match = _abnf.GENERIC_PARAM_RE.match
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise SipParseError(f"bad parameter in {text!r}")
        out.append((m.group(1).lower(), m.group(2)))
        pos = m.end()
    return tuple(out)


def format_params(params: Params) -> str:
    """Serialise header parameters as ``;name[=value]``."""
    return "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)


def _param(params: Params, name: str) -> str | None:
    name = name.lower()
    for key, value in params:
        if key == name:
            return value
    return None


def _flag_param(params: Params, name: str) -> str | None:
    for key, value in params:
        if key == name:
            return "" if value is None else value
    return None


class Via(Value):
    """One Via value (RFC 3261 §20.42); ``transport`` is upper case."""

    __slots__ = ("host", "params", "port", "transport")
    _FIELDS = ("transport", "host", "port", "params")

    def __init__(
        self, transport: str, host: str, port: int | None = None, params: Params = ()
    ) -> None:
        self.transport: Final = transport
        self.host: Final = host
        self.port: Final = port
        self.params: Final = params

    @property
    def branch(self) -> str | None:
        """The branch parameter (RFC 3261 §8.1.1.7); "" if present without a value."""
        return _flag_param(self.params, "branch")

    @property
    def received(self) -> str | None:
        """The received parameter (RFC 3261 §18.2.1); "" if present without a value."""
        return _flag_param(self.params, "received")

    @property
    def rport(self) -> str | None:
        """The rport parameter (RFC 3581); "" when present without a value."""
        return _flag_param(self.params, "rport")

    def param(self, name: str) -> str | None:
        """Value of parameter ``name`` (None if absent or a flag)."""
        return _param(self.params, name)

    def with_param(self, name: str, value: str | None = None) -> Via:
        """Copy with parameter ``name`` set (replacing any existing one)."""
        return self.replace(params=set_param(self.params, name, value))

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"SIP/2.0/{self.transport} {self.host}{port}{format_params(self.params)}"


def parse_via(text: str) -> Via:
    """Parse one Via value; raises SipParseError."""
    m = _abnf.VIA_RE.match(text)
    if m is None:
        raise SipParseError(f"bad Via: {text!r}")
    proto, version, transport, host, port = m.groups()
    if proto.upper() != "SIP" or version != "2.0":
        raise SipParseError(f"bad Via protocol: {text!r}")
    return Via(
        transport.upper(),
        host.lower(),
        None if port is None else parse_port(port),
        parse_params(text, m.end()),
    )


class NameAddr(Value):
    """From/To/Contact/Route-style value: display name, URI and header parameters."""

    __slots__ = ("display_name", "params", "uri")
    _FIELDS = ("display_name", "uri", "params")

    def __init__(self, display_name: str | None, uri: SipUri, params: Params = ()) -> None:
        self.display_name: Final = display_name
        self.uri: Final = uri
        self.params: Final = params

    @property
    def tag(self) -> str | None:
        """The tag parameter (RFC 3261 §19.3)."""
        return _param(self.params, "tag")

    def param(self, name: str) -> str | None:
        """Raw value of header parameter ``name`` (None if absent or a flag)."""
        return _param(self.params, name)

    def has_param(self, name: str) -> bool:
        """True if header parameter ``name`` is present."""
        name = name.lower()
        return any(k == name for k, _ in self.params)

    def with_param(self, name: str, value: str | None = None) -> NameAddr:
        """Copy with header parameter ``name`` set (replacing any existing one)."""
        return self.replace(params=set_param(self.params, name, value))

    @property
    def q(self) -> float | None:
        """The Contact q parameter (RFC 3261 §20.10)."""
        value = _param(self.params, "q")
        if value is None:
            return None
        # qvalue  =  ( "0" [ "." 0*3DIGIT ] ) / ( "1" [ "." 0*3("0") ] )
        if _QVALUE_RE.fullmatch(value) is None:
            raise SipParseError(f"bad q value {value!r}")
        return float(value)

    @property
    def expires(self) -> int | None:
        """The Contact expires parameter in seconds (RFC 3261 §20.10)."""
        value = _param(self.params, "expires")
        return None if value is None else parse_uint(unquote(value), "expires")

    @property
    def instance(self) -> str | None:
        """The +sip.instance value without quotes (RFC 5626 §4.1), e.g. "<urn:uuid:...>"."""
        value = _param(self.params, "+sip.instance")
        return None if value is None else unquote(value)

    @property
    def reg_id(self) -> int | None:
        """The reg-id parameter (RFC 5626 §4.2)."""
        value = _param(self.params, "reg-id")
        return None if value is None else parse_uint(value, "reg-id")

    def __str__(self) -> str:
        params = format_params(self.params)
        if self.display_name is None:
            return f"<{self.uri}>{params}"
        return f"{quote(self.display_name)} <{self.uri}>{params}"


_QVALUE_RE = re.compile(r"0(?:\.[0-9]{0,3})?|1(?:\.0{0,3})?")
_QUOTED_RE = re.compile(_abnf.QUOTED_STRING)


_NAME_ADDRS: Final = Memo[NameAddr](4096)
_CONTACT_FIELDS: Final = Memo[tuple[NameAddr, ...]](4096)


def parse_name_addr(text: str) -> NameAddr:
    """Parse ``name-addr`` or ``addr-spec`` plus header params; raises SipParseError."""
    found = _NAME_ADDRS.get(text)
    if found is not None:
        return found
    return _NAME_ADDRS.put(text, _parse_name_addr(text))


def _parse_name_addr(text: str) -> NameAddr:
    s = text.strip(" \t")
    display: str | None = None
    if s.startswith('"'):
        m = _QUOTED_RE.match(s)
        if m is None:
            raise SipParseError(f"unterminated display name in {text!r}")
        display = unquote(m.group(0))
        lt = m.end()
        while lt < len(s) and s[lt] in " \t":
            lt += 1
        if lt >= len(s) or s[lt] != "<":
            raise SipParseError(f"display name without <uri> in {text!r}")
    else:
        lt = s.find("<")
        if lt > 0:
            name = s[:lt].strip(" \t")
            if '"' in name or ">" in name:
                raise SipParseError(f"bad display name in {text!r}")
            display = name or None
    if lt >= 0:
        gt = s.find(">", lt)
        if gt < 0:
            raise SipParseError(f"unterminated '<' in {text!r}")
        return NameAddr(display, parse_uri(s[lt + 1 : gt]), parse_params(s, gt + 1))
    # RFC 3261 §20: in addr-spec form everything after the first ';' is a header
    # parameter, not a URI parameter.
    semi = s.find(";")
    if semi < 0:
        return NameAddr(None, parse_uri(s))
    return NameAddr(None, parse_uri(s[:semi].rstrip(" \t")), parse_params(s, semi))


def parse_contact_field(text: str) -> tuple[NameAddr, ...] | None:
    """Parse one Contact field: its values, or None for "*"; raises SipParseError."""
    found = _CONTACT_FIELDS.get(text)
    if found is not None:
        return found
    values = split_list(text)
    if values == ["*"]:
        return None
    contacts = tuple(parse_name_addr(v) for v in values)
    for contact in contacts:
        # RFC 3261 §20.10 / RFC 5626 §4: these parameters have a defined syntax.
        _ = contact.q, contact.expires, contact.reg_id
    return _CONTACT_FIELDS.put(text, contacts)


class CSeq(Value):
    """CSeq value (RFC 3261 §20.16)."""

    __slots__ = ("method", "seq")
    _FIELDS = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq: Final = seq
        self.method: Final = method

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(text: str) -> CSeq:
    """Parse a CSeq value; raises SipParseError."""
    m = _abnf.CSEQ_RE.fullmatch(text.strip(" \t"))
    if m is None:
        raise SipParseError(f"bad CSeq: {text!r}", 400)
    return CSeq(parse_uint(m.group(1), "CSeq"), m.group(2))


# RFC 7616 §3.4 / RFC 3261 §25: these Digest parameters are tokens, never quoted.
_BARE_CREDENTIALS = frozenset({"algorithm", "qop", "nc"})
_BARE_CHALLENGE = frozenset({"algorithm", "stale"})


@dataclass(frozen=True)
class Credentials:
    """Authorization / Proxy-Authorization value (RFC 3261 §22.4); values unquoted."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """Value of auth parameter ``name``."""
        return _auth_param(self.params, name)

    def __str__(self) -> str:
        return _format_auth(self.scheme, self.params, _BARE_CREDENTIALS)


@dataclass(frozen=True)
class Challenge:
    """WWW-Authenticate / Proxy-Authenticate value (RFC 3261 §22.4); values unquoted."""

    scheme: str
    params: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        """Value of auth parameter ``name``."""
        return _auth_param(self.params, name)

    def __str__(self) -> str:
        return _format_auth(self.scheme, self.params, _BARE_CHALLENGE)


def _auth_param(params: tuple[tuple[str, str], ...], name: str) -> str | None:
    name = name.lower()
    for key, value in params:
        if key == name:
            return value
    return None


def _format_auth(scheme: str, params: tuple[tuple[str, str], ...], bare: frozenset[str]) -> str:
    items = (
        f"{n}={v}" if n in bare and _abnf.TOKEN_RE.fullmatch(v) else f"{n}={quote(v)}"
        for n, v in params
    )
    return f"{scheme} {', '.join(items)}".rstrip()


def _parse_auth(text: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    # credentials / challenge  =  auth-scheme LWS auth-param *(COMMA auth-param)
    m = _abnf.AUTH_SCHEME_RE.match(text)
    if m is None:
        raise SipParseError(f"bad auth header: {text!r}")
    params: list[tuple[str, str]] = []
    pos = m.end()
    end = len(text.rstrip(" \t"))
    while pos < end:
        p = _abnf.AUTH_PARAM_RE.match(text, pos)
        if p is None:
            raise SipParseError(f"bad auth parameter in {text!r}")
        params.append((p.group(1).lower(), unquote(p.group(2))))
        pos = p.end()
        if pos < end:
            if text[pos] != ",":
                raise SipParseError(f"bad auth parameter separator in {text!r}")
            pos += 1
            if pos >= end:
                raise SipParseError(f"trailing comma in {text!r}")
    return m.group(1), tuple(params)


def parse_credentials(text: str) -> Credentials:
    """Parse an Authorization / Proxy-Authorization value; raises SipParseError."""
    return Credentials(*_parse_auth(text))


def parse_challenge(text: str) -> Challenge:
    """Parse a WWW-Authenticate / Proxy-Authenticate value; raises SipParseError."""
    return Challenge(*_parse_auth(text))
