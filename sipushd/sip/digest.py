"""HTTP Digest maths for SIP: hashes, challenges and credentials parsing.

One job: the arithmetic and syntax of Digest authentication (RFC 3261 §22.4,
RFC 2617 §3, RFC 7616 §3, RFC 8760 for SHA-256 in SIP). No policy here: nonce
minting, replay protection and user lookup live in `sipushd.core.auth`.
Rules: stdlib only; HA1 values are lower-case hex; comparisons of secrets
use `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from sipushd.sip.errors import SipParseError

__all__ = [
    "ALGORITHMS",
    "CredentialsLike",
    "DigestCredentials",
    "build_challenge",
    "canonical_algorithm",
    "digest_response",
    "ha1",
    "parse_digest_credentials",
    "responses_equal",
    "session_ha1",
]

# RFC 7616 §3.3 / RFC 8760 §2.2: algorithm name -> hash function.
_HASHES: dict[str, Callable[[bytes], str]] = {
    "MD5": lambda data: hashlib.md5(data, usedforsecurity=False).hexdigest(),
    "SHA-256": lambda data: hashlib.sha256(data).hexdigest(),
}
ALGORITHMS = ("MD5", "MD5-sess", "SHA-256", "SHA-256-sess")
_HEX_LEN = {"MD5": 32, "SHA-256": 64}

# RFC 3261 §25.1: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# auth-param = param-name EQUAL ( token / quoted-string ), separated by COMMA
_PARAM_RE = re.compile(
    r"\s*(" + _TOKEN + r")\s*=\s*(?:\"((?:[^\"\\]|\\.)*)\"|([^\s,\"]+))\s*(,|$)",
    re.DOTALL,
)
_QUOTED_PAIR_RE = re.compile(r"\\(.)", re.DOTALL)
_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")
_HEX_RE = re.compile(r"[0-9a-f]+")


class CredentialsLike(Protocol):
    """The message layer's `Credentials`: scheme plus unquoted, lower-cased params."""

    @property
    def scheme(self) -> str: ...

    @property
    def params(self) -> tuple[tuple[str, str], ...]: ...


@dataclass(frozen=True)
class DigestCredentials:
    """The fields of a Digest Authorization / Proxy-Authorization (RFC 3261 §22.4)."""

    username: str
    realm: str
    nonce: str
    uri: str
    response: str  # lower-case hex
    algorithm: str = "MD5"  # canonical spelling when known (see canonical_algorithm)
    cnonce: str | None = None
    nc: str | None = None  # eight hex digits, as sent
    qop: str | None = None  # "auth" or "auth-int", lower-case
    opaque: str | None = None

    @property
    def nonce_count(self) -> int | None:
        """The nonce-count as an integer, or None without qop."""
        return None if self.nc is None else int(self.nc, 16)


def canonical_algorithm(name: str | None) -> str:
    """The registered spelling of an algorithm name; MD5 when absent (RFC 2617 §3.2.1)."""
    if name is None:
        return "MD5"
    for known in ALGORITHMS:
        if known.lower() == name.lower():
            return known
    return name


def _hash_for(algorithm: str) -> Callable[[bytes], str]:
    base = canonical_algorithm(algorithm).removesuffix("-sess")
    try:
        return _HASHES[base]
    except KeyError:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}") from None


def ha1(username: str, realm: str, password: str, algorithm: str = "MD5") -> str:
    """H(username:realm:password), the value a users file stores (RFC 7616 §3.4.2)."""
    return _hash_for(algorithm)(f"{username}:{realm}:{password}".encode())


def session_ha1(ha1_value: str, nonce: str, cnonce: str, algorithm: str) -> str:
    """For the -sess algorithms: H(H(user:realm:pass):nonce:cnonce) (RFC 7616 §3.4.2)."""
    return _hash_for(algorithm)(f"{ha1_value}:{nonce}:{cnonce}".encode())


def digest_response(
    ha1: str,
    method: str,
    uri: str,
    nonce: str,
    nc: str | None,
    cnonce: str | None,
    qop: str | None,
    algorithm: str = "MD5",
    body: bytes = b"",
) -> str:
    """The request-digest for the stored HA1 (RFC 2617 §3.2.2.1, RFC 7616 §3.4.1)."""
    h = _hash_for(algorithm)
    key = ha1
    if canonical_algorithm(algorithm).endswith("-sess"):
        key = session_ha1(ha1, nonce, cnonce or "", algorithm)
    if qop == "auth-int":
        # RFC 7616 §3.4.3: A2 = Method ":" request-uri ":" H(entity-body)
        ha2 = h(f"{method}:{uri}:{h(body)}".encode())
    else:
        ha2 = h(f"{method}:{uri}".encode())
    if not qop:
        # RFC 2069 compatibility (RFC 2617 §3.2.2.1): no nonce-count, no cnonce.
        return h(f"{key}:{nonce}:{ha2}".encode())
    return h(f"{key}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}".encode())


def responses_equal(expected: str, received: str) -> bool:
    """Compare two digests in constant time."""
    return hmac.compare_digest(expected.lower().encode(), received.lower().encode())


def _quote(value: str) -> str:
    """A quoted-string (RFC 3261 §25.1), escaping '"' and '\\'."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_challenge(
    realm: str,
    nonce: str,
    algorithm: str = "MD5",
    *,
    opaque: str | None = None,
    stale: bool = False,
    qop: str | None = "auth",
) -> str:
    """A WWW-Authenticate / Proxy-Authenticate value (RFC 3261 §22.4, RFC 8760 §2.4)."""
    parts = [f"realm={_quote(realm)}", f"nonce={_quote(nonce)}"]
    if opaque is not None:
        parts.append(f"opaque={_quote(opaque)}")
    if stale:
        parts.append("stale=true")
    parts.append(f"algorithm={canonical_algorithm(algorithm)}")
    if qop:
        parts.append(f"qop={_quote(qop)}")
    return "Digest " + ", ".join(parts)


def _parse_params(text: str) -> dict[str, str]:
    """Split `name=value, name="quoted"` into a dict with lower-cased names."""
    params: dict[str, str] = {}
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _PARAM_RE.match(text, pos)
        if match is None:
            raise SipParseError(f"malformed Digest parameter near {text[pos : pos + 20]!r}")
        name = match.group(1).lower()
        quoted, plain = match.group(2), match.group(3)
        value = _QUOTED_PAIR_RE.sub(r"\1", quoted) if quoted is not None else plain
        if name in params:
            raise SipParseError(f"Digest parameter {name!r} appears twice")
        params[name] = value
        pos = match.end()
        if match.group(4) == "," and pos >= len(text):
            raise SipParseError("Digest credentials end with a comma")
    return params


def parse_digest_credentials(value: str | CredentialsLike) -> DigestCredentials:
    """Parse an Authorization value (or a parsed `Credentials`) into DigestCredentials."""
    if isinstance(value, str):
        parts = value.strip().split(None, 1)
        scheme, rest = (parts[0] if parts else ""), (parts[1] if len(parts) > 1 else "")
    else:
        scheme, rest = value.scheme, ""
    if scheme.lower() != "digest":
        raise SipParseError(f"unsupported authentication scheme {scheme!r}")
    if isinstance(value, str):
        return _credentials_from(_parse_params(rest))
    return _credentials_from({name.lower(): val for name, val in value.params})


def _credentials_from(params: dict[str, str]) -> DigestCredentials:
    for name in ("username", "realm", "nonce", "uri", "response"):
        if name not in params:
            raise SipParseError(f"Digest credentials without {name}")
    algorithm = canonical_algorithm(params.get("algorithm"))
    qop = params.get("qop")
    cnonce, nc = params.get("cnonce"), params.get("nc")
    if qop is not None:
        qop = qop.lower()
        if qop not in ("auth", "auth-int"):
            raise SipParseError(f"unsupported Digest qop {qop!r}")
        # RFC 2617 §3.2.2: with qop, cnonce and nonce-count MUST be present.
        if cnonce is None or nc is None:
            raise SipParseError("Digest credentials with qop need cnonce and nc")
        if not _NC_RE.fullmatch(nc):
            raise SipParseError(f"Digest nc {nc!r} is not eight hex digits")
    elif algorithm.endswith("-sess"):
        raise SipParseError("Digest -sess algorithms need qop and cnonce")
    response = params["response"].lower()
    base = algorithm.removesuffix("-sess")
    if not _HEX_RE.fullmatch(response) or len(response) != _HEX_LEN.get(base, len(response)):
        raise SipParseError("Digest response is not a hex digest of the right length")
    return DigestCredentials(
        username=params["username"],
        realm=params["realm"],
        nonce=params["nonce"],
        uri=params["uri"],
        response=response,
        algorithm=algorithm,
        cnonce=cnonce,
        nc=nc,
        qop=qop,
        opaque=params.get("opaque"),
    )
