"""The authentication gate: decides whether a request may go on, or how to challenge it.

RFC 3261 §22: a registrar challenges with 401 / WWW-Authenticate, a proxy with 407 /
Proxy-Authenticate. Sources inside `trusted_networks` pass unchallenged; an address
that keeps failing is refused with 403 for a while (and counted).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog

from sipushd import metrics
from sipushd.core.auth import (
    Authenticator,
    AuthOutcome,
    FailureThrottle,
    Network,
    UserRecord,
    is_trusted,
)
from sipushd.sip import Endpoint, Request

log = structlog.get_logger("sipushd.auth")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Either `username` (authenticated, or None for a trusted source) or a refusal."""

    passed: bool
    username: str | None = None
    status: int = 0
    reason: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


PASS = Verdict(passed=True)


class AuthGate:
    """Digest authentication of requests from one realm's users."""

    def __init__(
        self,
        authenticator: Authenticator,
        users: Mapping[str, UserRecord],
        *,
        trusted: tuple[Network, ...] = (),
        throttle: FailureThrottle | None = None,
        clock: Callable[[], float],
    ) -> None:
        self.authenticator = authenticator
        self.users = users
        self.trusted = trusted
        self.throttle = throttle
        self.clock = clock

    def check(self, request: Request, source: Endpoint, *, proxy: bool = False) -> Verdict:
        """Verify the request's credentials (Proxy-Authorization when `proxy`)."""
        if self.trusted and is_trusted(source.host, self.trusted):
            return PASS
        now = self.clock()
        if self.throttle is not None and self.throttle.is_blocked(source.host, now):
            metrics.AUTH_FAILURES.labels(reason="blocked").inc()
            return Verdict(False, status=403, reason="Too Many Failed Attempts")
        credentials = request.proxy_authorization if proxy else request.authorization
        result = self.authenticator.verify(request.method, credentials, self.users, now)
        if result.ok:
            if self.throttle is not None:
                self.throttle.record_success(source.host)
            return Verdict(True, username=result.username)
        if result.outcome is not AuthOutcome.MISSING:
            metrics.AUTH_FAILURES.labels(reason=result.outcome.value).inc()
            log.info(
                "authentication failed",
                peer=f"{source.host}:{source.port}",
                outcome=result.outcome.value,
                user=result.username,
            )
        # `is not None`: an empty FailureThrottle has len() 0 and so is falsy.
        throttle = self.throttle
        if (
            result.counts_as_failure
            and throttle is not None
            and throttle.record_failure(source.host, now)
        ):
            return Verdict(False, status=403, reason="Too Many Failed Attempts")
        return self.challenge(proxy=proxy, stale=result.stale)

    def challenge(self, *, proxy: bool, stale: bool = False) -> Verdict:
        """A 401 (registrar) or 407 (proxy) with one challenge per algorithm."""
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        values = self.authenticator.challenge(self.clock(), stale=stale)
        return Verdict(
            False,
            status=407 if proxy else 401,
            headers=tuple((name, value) for value in values),
        )
