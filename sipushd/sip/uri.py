"""SIP, SIPS and tel URIs (RFC 3261 §19.1, RFC 3966); other schemes are kept opaque.

Parsing unescapes %-escapes; serialising escapes only the characters a part may
not carry unescaped (RFC 3261 §19.1.2). Push tokens such as
``pn-prid=ABC:voip&DEF:remote`` survive unchanged: ':' and '&' are
param-unreserved.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Final
from urllib.parse import quote, unquote

from sipushd.sip import _abnf
from sipushd.sip._memo import Memo
from sipushd.sip.errors import SipParseError
from sipushd.sip.value import Value

Params = tuple[tuple[str, str | None], ...]

_MAX_PORT = 65535
# RFC 3261 §19.1.4: these URI parameters must match when either URI has them.
_STRICT_PARAMS = ("user", "ttl", "method", "maddr", "transport")


class SipUri(Value):
    """A parsed URI; unknown schemes keep everything after "scheme:" in ``opaque``."""

    __slots__ = (
        "_text",
        "headers",
        "host",
        "opaque",
        "params",
        "password",
        "port",
        "scheme",
        "user",
    )
    _FIELDS = ("scheme", "user", "password", "host", "port", "params", "headers", "opaque")

    def __init__(
        self,
        scheme: str,
        user: str | None = None,
        password: str | None = None,
        host: str = "",
        port: int | None = None,
        params: Params = (),
        headers: tuple[tuple[str, str], ...] = (),
        opaque: str | None = None,
    ) -> None:
        self.scheme: Final = scheme
        self.user: Final = user
        self.password: Final = password
        self.host: Final = host
        self.port: Final = port
        self.params: Final = params
        self.headers: Final = headers
        self.opaque: Final = opaque
        self._text: str | None = None  # str(self), once known; not part of the value

    def param(self, name: str) -> str | None:
        """Value of URI parameter ``name`` (None if absent or a flag)."""
        name = name.lower()
        for key, value in self.params:
            if key == name:
                return value
        return None

    def has_param(self, name: str) -> bool:
        """True if URI parameter ``name`` is present (with or without a value)."""
        name = name.lower()
        return any(key == name for key, _ in self.params)

    def with_param(self, name: str, value: str | None = None) -> SipUri:
        """Copy with parameter ``name`` set to ``value`` (replacing any existing one)."""
        return self.replace(params=set_param(self.params, name.lower(), value))

    def with_params(self, **kv: str | None) -> SipUri:
        """Copy with each keyword set as a parameter (use with_param for names with '-')."""
        params = self.params
        for name, value in kv.items():
            params = set_param(params, name.lower(), value)
        return self.replace(params=params)

    def without_param(self, name: str) -> SipUri:
        """Copy without parameter ``name``."""
        name = name.lower()
        return self.replace(params=tuple(p for p in self.params if p[0] != name))

    @property
    def host_port(self) -> str:
        """``host`` or ``host:port``."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    @property
    def aor(self) -> str:
        """Address-of-record key: scheme, user and host, no port or params (§10.3)."""
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        if self.scheme == "tel":
            return f"tel:{_escape_tel(self.user or '')}"
        if self.user is None:
            return f"{self.scheme}:{self.host}"
        return f"{self.scheme}:{_escape_user(self.user)}@{self.host}"

    @property
    def transport(self) -> str:
        """Lowercase ``transport`` parameter; "udp" by default, "tls" for sips (§19.1.2)."""
        value = self.param("transport")
        value = value.lower() if value else None
        if self.scheme == "sips" and value in (None, "udp", "tcp", "tls"):
            return "tls"
        return value or "udp"

    def matches(self, other: SipUri) -> bool:
        """URI equality as defined by RFC 3261 §19.1.4."""
        if self.scheme != other.scheme:
            return False
        if self.opaque is not None or other.opaque is not None:
            return self.opaque == other.opaque
        if (self.user, self.password, self.host, self.port) != (
            other.user,
            other.password,
            other.host,
            other.port,
        ):
            return False
        mine = {k: (v or "").lower() for k, v in self.params}
        theirs = {k: (v or "").lower() for k, v in other.params}
        for name in mine.keys() | theirs.keys():
            in_both = name in mine and name in theirs
            if in_both and mine[name] != theirs[name]:
                return False
            if not in_both and name in _STRICT_PARAMS:
                return False
        # §19.1.4: header components are never ignored.
        return sorted((k.lower(), v) for k, v in self.headers) == sorted(
            (k.lower(), v) for k, v in other.headers
        )

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = _serialise(self)
            self._text = text
        return text


def set_param(params: Params, name: str, value: str | None) -> Params:
    """Return ``params`` with ``name`` set in place (duplicates dropped) or appended."""
    name = name.lower()
    out: list[tuple[str, str | None]] = []
    done = False
    for item in params:
        if item[0] != name:
            out.append(item)
        elif not done:
            out.append((name, value))
            done = True
    if not done:
        out.append((name, value))
    return tuple(out)


def parse_uri(text: str) -> SipUri:
    """Parse a URI; raises SipParseError if it is malformed."""
    found = _URIS.get(text)
    if found is not None:
        return found
    try:
        return _URIS.put(text, _parse_uri(text))
    except SipParseError:
        raise
    except (ValueError, UnicodeError) as exc:
        raise SipParseError(f"bad URI {text!r}: {exc}") from exc


# Recent URIs (AORs, the registrar's own URI, Contacts that refresh).
_URIS: Final = Memo[SipUri](4096)


def _parse_uri(text: str) -> SipUri:
    if _maybe_bad_chars(text) and _abnf.BAD_URI_CHARS_RE.search(text):
        raise SipParseError(f"bad character in URI {text!r}")
    if text.startswith("sip:"):  # the common schemes without a regex call
        scheme, rest = "sip", text[4:]
    elif text.startswith("sips:"):
        scheme, rest = "sips", text[5:]
    else:
        m = _abnf.SCHEME_RE.match(text)
        if m is None:
            raise SipParseError(f"URI without scheme: {text!r}")
        scheme = m.group(1).lower()
        rest = text[m.end() :]
    if not rest:
        raise SipParseError(f"empty URI after scheme: {text!r}")
    if scheme in ("sip", "sips"):
        uri = _parse_sip(scheme, rest)
    elif scheme == "tel":
        uri = _parse_tel(rest)
    else:
        uri = SipUri(scheme=scheme, opaque=rest)
    uri._text = text
    return uri


def _maybe_bad_chars(text: str) -> bool:
    """False when `text` surely has none of BAD_URI_CHARS_RE's characters.

    Controls and DEL are not printable; space, '<', '>' and '"' are looked for: a few
    scans that cost less than the regex search they spare for a clean URI.
    """
    return not text.isprintable() or " " in text or "<" in text or ">" in text or '"' in text


def _parse_sip(scheme: str, rest: str) -> SipUri:
    # SIP-URI  =  "sip:" [ userinfo ] hostport uri-parameters [ headers ]
    user = password = None
    at = rest.find("@")
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        user_text, colon, pw_text = userinfo.partition(":")
        if not user_text:
            raise SipParseError("empty user part in URI")
        user = _unescape(user_text)
        password = _unescape(pw_text) if colon else None
    headers: tuple[tuple[str, str], ...] = ()
    qmark = rest.find("?")
    if qmark >= 0:
        headers = _parse_uri_headers(rest[qmark + 1 :])
        rest = rest[:qmark]
    hostport, semi, param_text = rest.partition(";")
    host, port = _parse_hostport(hostport)
    params = _parse_uri_params(param_text) if semi else ()
    return SipUri(scheme, user, password, host, port, params, headers)


def _parse_tel(rest: str) -> SipUri:
    # telephone-subscriber  =  global-number / local-number  (RFC 3966 §3)
    number, semi, param_text = rest.partition(";")
    if not number:
        raise SipParseError("empty tel URI")
    params = _parse_uri_params(param_text) if semi else ()
    return SipUri("tel", user=_unescape(number), params=params)


def _parse_hostport(text: str) -> tuple[str, int | None]:
    # hostport  =  host [ ":" port ]
    if text.startswith("["):
        m = _abnf.IPV6_REFERENCE_RE.match(text)
        if m is None:
            raise SipParseError(f"bad IPv6 reference {text!r}")
        ipaddress.IPv6Address(m.group(1))
        host, rest = text[: m.end()], text[m.end() :]
    else:
        host, colon, port_text = text.partition(":")
        rest = colon + port_text
        if _abnf.HOSTNAME_RE.fullmatch(host) is None:
            raise SipParseError(f"bad host {host!r}")
    if not rest:
        return host.lower(), None
    if not rest.startswith(":"):
        raise SipParseError(f"bad hostport {text!r}")
    return host.lower(), parse_port(rest[1:])


def parse_port(text: str) -> int:
    """Parse a port number (0-65535); raises SipParseError."""
    if not (text.isascii() and text.isdigit()) or len(text) > 5 or int(text) > _MAX_PORT:
        raise SipParseError(f"bad port {text!r}")
    return int(text)


def _parse_uri_params(text: str) -> Params:
    # uri-parameters  =  *( ";" uri-parameter)
    # other-param     =  pname [ "=" pvalue ]
    out: list[tuple[str, str | None]] = []
    unescape = _unescape if "%" in text else _as_is
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not name:
            raise SipParseError(f"empty URI parameter in {text!r}")
        out.append((unescape(name).lower(), unescape(value) if eq else None))
    return tuple(out)


def _as_is(text: str) -> str:
    return text


def _parse_uri_headers(text: str) -> tuple[tuple[str, str], ...]:
    # headers  =  "?" header *( "&" header )
    # header   =  hname "=" hvalue
    out: list[tuple[str, str]] = []
    for item in text.split("&"):
        name, eq, value = item.partition("=")
        if not name or not eq:
            raise SipParseError(f"bad URI header {item!r}")
        out.append((_unescape(name), _unescape(value)))
    return tuple(out)


def _unescape(text: str) -> str:
    # escaped  =  "%" HEXDIG HEXDIG ; octets must form UTF-8 text
    if "%" not in text:
        return text
    return unquote(text, errors="strict")


def _escape_user(text: str) -> str:
    if _abnf.USER_NEEDS_ESCAPE_RE.search(text) is None:
        return text
    return quote(text, safe=_abnf.USER_SAFE + "!~*'()")


def _escape_tel(text: str) -> str:
    # RFC 3966 §3: ';' starts a parameter, so it is escaped inside the number.
    return _escape(text, _abnf.TEL_NEEDS_ESCAPE_RE, _abnf.TEL_SAFE)


def _escape(text: str, needs: re.Pattern[str], safe: str) -> str:
    if needs.search(text) is None:
        return text
    return quote(text, safe=safe + "!~*'()")


def _serialise(uri: SipUri) -> str:
    if uri.opaque is not None:
        return f"{uri.scheme}:{uri.opaque}"
    parts = [uri.scheme, ":"]
    if uri.scheme == "tel":
        parts.append(_escape_tel(uri.user or ""))
    elif uri.user is not None:
        parts.append(_escape_user(uri.user))
        if uri.password is not None:
            parts += (":", _escape(uri.password, _abnf.PASSWORD_NEEDS_ESCAPE_RE, "&=+$,"))
        parts.append("@")
    parts.append(uri.host)
    if uri.port is not None:
        parts += (":", str(uri.port))
    for name, value in uri.params:
        parts += (";", _escape(name, _abnf.PARAM_NEEDS_ESCAPE_RE, _abnf.PARAM_SAFE))
        if value is not None:
            parts += ("=", _escape(value, _abnf.PARAM_NEEDS_ESCAPE_RE, _abnf.PARAM_SAFE))
    sep = "?"
    for name, value in uri.headers:
        parts += (sep, _escape(name, _abnf.HEADER_NEEDS_ESCAPE_RE, _abnf.HEADER_SAFE))
        parts += ("=", _escape(value, _abnf.HEADER_NEEDS_ESCAPE_RE, _abnf.HEADER_SAFE))
        sep = "&"
    return "".join(parts)
