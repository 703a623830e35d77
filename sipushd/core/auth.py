"""Digest authentication policy for the registrar: nonces, verification, throttling.

One job: decide whether a request's Authorization proves a known user, and
what to challenge with otherwise (RFC 3261 §22.4, RFC 7616, RFC 8760).

- Nonces are stateless: base64url(issued-ms | 8 random bytes | HMAC-SHA256
  over both and the realm, cut to 16 bytes). Any node holding the secret can
  check them; they expire after `nonce_ttl` and a correct answer to an
  expired nonce is `stale` (the challenge then carries stale=true, RFC 7616
  §3.3) so the phone retries without asking its user.
- Replay protection (RFC 7616 §3.4.5): the nonce-counts accepted for each
  still-valid nonce are remembered (highest + a 64-wide window, so requests
  sharing a nonce may arrive out of order). Memory is bounded; a nonce pushed
  out of the table is answered `stale` rather than trusted again.
- `FailureThrottle` blocks a source address after repeated bad passwords.
- `now` is passed in. Use a wall clock when nonces must survive a restart or
  be shared by several nodes.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from sipushd.sip.digest import (
    CredentialsLike,
    DigestCredentials,
    build_challenge,
    canonical_algorithm,
    digest_response,
    ha1,
    parse_digest_credentials,
    responses_equal,
)
from sipushd.sip.errors import SipParseError

__all__ = [
    "AuthOutcome",
    "AuthResult",
    "Authenticator",
    "Credential",
    "FailureThrottle",
    "Network",
    "UserRecord",
    "is_trusted",
    "parse_networks",
]

Credential = DigestCredentials | CredentialsLike | str
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_MAC_LEN = 16
_RAND_LEN = 8
_NONCE_LEN = 8 + _RAND_LEN + _MAC_LEN
_NC_WINDOW = 64


@dataclass(frozen=True)
class UserRecord:
    """A user's stored secrets: HA1 = H(username:realm:password) for each hash."""

    ha1_md5: str
    ha1_sha256: str

    @classmethod
    def from_password(cls, username: str, realm: str, password: str) -> UserRecord:
        """Both HA1 values for a plain password."""
        return cls(
            ha1_md5=ha1(username, realm, password, "MD5"),
            ha1_sha256=ha1(username, realm, password, "SHA-256"),
        )

    def ha1(self, algorithm: str) -> str:
        """The HA1 for `algorithm` (the -sess variants share their base hash's HA1)."""
        base = canonical_algorithm(algorithm).removesuffix("-sess")
        if base == "MD5":
            return self.ha1_md5
        if base == "SHA-256":
            return self.ha1_sha256
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")


class AuthOutcome(enum.Enum):
    """What `Authenticator.verify` concluded."""

    OK = "ok"
    MISSING = "missing"  # no credentials for our realm: challenge
    INVALID = "invalid"  # malformed or not what we offered: 400 or challenge
    STALE = "stale"  # right password, expired nonce: challenge with stale=true
    BAD_NONCE = "bad_nonce"  # not a nonce of ours: challenge
    BAD_PASSWORD = "bad_password"
    UNKNOWN_USER = "unknown_user"
    REPLAY = "replay"  # nonce-count seen before: challenge


@dataclass(frozen=True)
class AuthResult:
    """The outcome of a verification, with the username when one was given."""

    outcome: AuthOutcome
    username: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        """True when the request is authenticated."""
        return self.outcome is AuthOutcome.OK

    @property
    def stale(self) -> bool:
        """True when the next challenge must carry stale=true."""
        return self.outcome is AuthOutcome.STALE

    @property
    def counts_as_failure(self) -> bool:
        """True for a wrong guess, which `FailureThrottle` should count."""
        return self.outcome in (AuthOutcome.BAD_PASSWORD, AuthOutcome.UNKNOWN_USER)


class _NonceCounts:
    """Accepted nonce-counts per live nonce, bounded (RFC 7616 §3.4.5)."""

    def __init__(self, max_nonces: int) -> None:
        self._max = max_nonces
        # nonce -> (expires_at, highest nc, bit i set = highest - i was seen)
        self._seen: OrderedDict[str, tuple[float, int, int]] = OrderedDict()
        self.evicted_before = float("-inf")  # expiry of the newest nonce pushed out

    def __len__(self) -> int:
        return len(self._seen)

    def accept(self, nonce: str, nc: int, expires_at: float) -> bool:
        """Record `nc` for `nonce`; False if it was seen already or is too old."""
        entry = self._seen.get(nonce)
        if entry is None:
            self._seen[nonce] = (expires_at, nc, 1)
            while len(self._seen) > self._max:
                _, (old_expiry, _, _) = self._seen.popitem(last=False)
                self.evicted_before = max(self.evicted_before, old_expiry)
            return True
        _, highest, mask = entry
        if nc > highest:
            shift = nc - highest
            mask = ((mask << shift) | 1) & ((1 << _NC_WINDOW) - 1) if shift < _NC_WINDOW else 1
            self._seen[nonce] = (expires_at, nc, mask)
            return True
        offset = highest - nc
        if offset >= _NC_WINDOW or mask & (1 << offset):
            return False
        self._seen[nonce] = (expires_at, highest, mask | (1 << offset))
        return True

    def known(self, nonce: str) -> bool:
        """True if this nonce has an entry."""
        return nonce in self._seen

    def purge(self, now: float) -> None:
        """Forget nonces that have expired (entries are in first-use order)."""
        while self._seen:
            nonce, (expires_at, _, _) = next(iter(self._seen.items()))
            if expires_at > now:
                break
            del self._seen[nonce]


class Authenticator:
    """Challenges and verifies Digest credentials for one realm."""

    def __init__(
        self,
        realm: str,
        secret: bytes,
        *,
        nonce_ttl: float = 300.0,
        algorithms: Sequence[str] = ("SHA-256", "MD5"),
        max_nonces: int = 100_000,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
    ) -> None:
        if not secret:
            raise ValueError("the nonce secret must not be empty")
        self.realm = realm
        self.nonce_ttl = nonce_ttl
        self.algorithms = tuple(canonical_algorithm(a) for a in algorithms)
        for algorithm in self.algorithms:
            UserRecord("", "").ha1(algorithm)  # raises for an unsupported one
        self._secret = secret
        self._random = random_bytes
        self._counts = _NonceCounts(max_nonces)

    def make_nonce(self, now: float) -> str:
        """A fresh stateless nonce issued at `now`."""
        head = max(0, int(now * 1000)).to_bytes(8, "big") + self._random(_RAND_LEN)
        return base64.urlsafe_b64encode(head + self._mac(head)).decode().rstrip("=")

    def _mac(self, head: bytes) -> bytes:
        data = head + self.realm.encode()
        return hmac.new(self._secret, data, hashlib.sha256).digest()[:_MAC_LEN]

    def nonce_issued_at(self, nonce: str) -> float | None:
        """When a nonce of ours was issued, or None if it is not one of ours."""
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return None
        if len(raw) != _NONCE_LEN:
            return None
        head, mac = raw[: 8 + _RAND_LEN], raw[8 + _RAND_LEN :]
        if not hmac.compare_digest(mac, self._mac(head)):
            return None
        return int.from_bytes(head[:8], "big") / 1000

    def challenge(self, now: float, stale: bool = False) -> list[str]:
        """WWW-Authenticate values, strongest algorithm first (RFC 8760 §2.4)."""
        nonce = self.make_nonce(now)
        return [build_challenge(self.realm, nonce, a, stale=stale) for a in self.algorithms]

    def purge(self, now: float) -> None:
        """Drop replay state of expired nonces (also done by every verify)."""
        self._counts.purge(now)

    @property
    def tracked_nonces(self) -> int:
        """How many nonces have replay state."""
        return len(self._counts)

    def verify(
        self,
        method: str,
        credentials: Credential | Sequence[Credential] | None,
        users: Mapping[str, UserRecord],
        now: float,
        body: bytes = b"",
    ) -> AuthResult:
        """Check credentials (one, or all Authorization headers) against `users`."""
        self._counts.purge(now)
        found = self._pick(credentials)
        if isinstance(found, AuthResult):
            return found
        return self._check(method, found, users, now, body)

    def _pick(
        self, credentials: Credential | Sequence[Credential] | None
    ) -> DigestCredentials | AuthResult:
        """The credentials for our realm (RFC 3261 §22.4 allows one per realm)."""
        if credentials is None:
            return AuthResult(AuthOutcome.MISSING)
        many: Sequence[Credential]
        if isinstance(credentials, str | DigestCredentials) or not isinstance(
            credentials, Sequence
        ):
            many = [credentials]
        else:
            many = credentials
        problem = ""
        for item in many:
            try:
                if isinstance(item, DigestCredentials):
                    parsed = item
                else:
                    parsed = parse_digest_credentials(item)
            except SipParseError as exc:
                problem = str(exc)
                continue
            if parsed.realm == self.realm:
                return parsed
        if problem:
            return AuthResult(AuthOutcome.INVALID, detail=problem)
        return AuthResult(AuthOutcome.MISSING, detail=f"no credentials for realm {self.realm}")

    def _check(
        self,
        method: str,
        cred: DigestCredentials,
        users: Mapping[str, UserRecord],
        now: float,
        body: bytes,
    ) -> AuthResult:
        user = cred.username

        def result(outcome: AuthOutcome, detail: str = "") -> AuthResult:
            return AuthResult(outcome, user, detail)

        if cred.algorithm not in self.algorithms:
            return result(AuthOutcome.INVALID, f"algorithm {cred.algorithm} was not offered")
        if cred.qop is None or cred.nonce_count is None:
            # We always offer qop=auth; without it there is no nonce-count to check.
            return result(AuthOutcome.INVALID, "credentials without qop")
        if cred.nonce_count == 0:
            return result(AuthOutcome.INVALID, "nonce-count 0")
        issued = self.nonce_issued_at(cred.nonce)
        if issued is None or issued > now + self.nonce_ttl:
            return result(AuthOutcome.BAD_NONCE, "not a nonce of ours")
        record = users.get(user)
        if record is None:
            return result(AuthOutcome.UNKNOWN_USER)
        expected = digest_response(
            record.ha1(cred.algorithm),
            method,
            cred.uri,
            cred.nonce,
            cred.nc,
            cred.cnonce,
            cred.qop,
            cred.algorithm,
            body,
        )
        if not responses_equal(expected, cred.response):
            return result(AuthOutcome.BAD_PASSWORD)
        expires_at = issued + self.nonce_ttl
        if expires_at <= now:
            return result(AuthOutcome.STALE, "nonce expired")
        if not self._counts.known(cred.nonce) and expires_at <= self._counts.evicted_before:
            return result(AuthOutcome.STALE, "nonce no longer tracked")
        if not self._counts.accept(cred.nonce, cred.nonce_count, expires_at):
            return result(AuthOutcome.REPLAY, f"nonce-count {cred.nc} already used")
        return result(AuthOutcome.OK)


class FailureThrottle:
    """Blocks a source address after `max_failures` failures within `window` seconds."""

    def __init__(
        self,
        max_failures: int = 10,
        block_seconds: float = 300.0,
        *,
        window: float | None = None,
        max_entries: int = 10_000,
    ) -> None:
        self.max_failures = max_failures
        self.block_seconds = block_seconds
        self.window = block_seconds if window is None else window
        self.max_entries = max_entries
        self.blocks = 0  # how many times an address was blocked
        # addr -> (failures, first failure time, blocked until), least recent first
        self._entries: OrderedDict[str, tuple[int, float, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def is_blocked(self, addr: str, now: float) -> bool:
        """True while `addr` is blocked."""
        entry = self._entries.get(addr)
        return entry is not None and entry[2] > now

    def record_failure(self, addr: str, now: float) -> bool:
        """Count a failure from `addr`; True when `addr` is (now) blocked."""
        self._purge(now)
        count, first, until = self._entries.pop(addr, (0, now, 0.0))
        if until > now:
            self._entries[addr] = (count, first, until)
            return True
        if now - first > self.window:
            count, first = 0, now
        count += 1
        blocked = count >= self.max_failures
        if blocked:
            self.blocks += 1
            self._entries[addr] = (0, now, now + self.block_seconds)
        else:
            self._entries[addr] = (count, first, 0.0)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return blocked

    def record_success(self, addr: str) -> None:
        """Forget the failures of `addr` (a block stays in force)."""
        entry = self._entries.get(addr)
        if entry is not None and entry[2] == 0.0:
            del self._entries[addr]

    def _purge(self, now: float) -> None:
        while self._entries:
            addr, (_, first, until) = next(iter(self._entries.items()))
            if until > now or now - first <= self.window:
                break
            del self._entries[addr]


def parse_networks(specs: Iterable[str]) -> tuple[Network, ...]:
    """Parse CIDR strings ("10.0.0.0/8", "::1"); ValueError names a bad one."""
    networks: list[Network] = []
    for spec in specs:
        try:
            networks.append(ipaddress.ip_network(spec.strip(), strict=False))
        except ValueError:
            raise ValueError(f"not an IP network: {spec!r}") from None
    return tuple(networks)


def is_trusted(ip: str, networks: Iterable[str | Network]) -> bool:
    """True if `ip` lies in one of `networks` (IPv4-mapped IPv6 counts as IPv4)."""
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)
    for net in networks:
        network = parse_networks([net])[0] if isinstance(net, str) else net
        if any(c.version == network.version and c in network for c in candidates):
            return True
    return False
