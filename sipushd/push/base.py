"""What every push provider shares: results, the two error kinds, the provider interface.

A dead token is a result (``PushOutcome.DEAD_TOKEN``), not an exception: the
registrar drops the binding. ``TemporaryPushError`` means "try again, maybe
after ``retry_after`` seconds" (429, 5xx, connection loss, timeouts);
``PermanentPushError`` means "this push will never work" (other 4xx, bad
credentials, a request that cannot be built).
"""

from __future__ import annotations

import abc
import enum
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

from sipushd.core.payload import PushRequest


class PushOutcome(enum.Enum):
    """How a push ended."""

    DELIVERED = "delivered"
    DEAD_TOKEN = "dead_token"
    FAILED = "failed"


@dataclass(frozen=True)
class PushResult:
    """The answer for one push.

    ``status`` is the provider's HTTP status (None when no answer came),
    ``reason`` the provider's reason (APNs ``reason``, FCM ``errorCode`` /
    ``status``) or one of the dispatcher's own: ``queue_full``, ``expired``,
    ``deadline``, ``no_provider``, ``shutdown``, ``invalid_request``.
    ``push_id`` is the ``apns-id`` or the FCM message name; ``detail`` free
    text for logs (``reason`` stays a short code, fit for a metric label);
    ``latency`` seconds from submission to the answer.
    """

    outcome: PushOutcome
    provider: str
    status: int | None = None
    reason: str = ""
    push_id: str | None = None
    attempts: int = 0
    latency: float = 0.0
    detail: str = ""

    @property
    def delivered(self) -> bool:
        """True when the provider accepted the push."""
        return self.outcome is PushOutcome.DELIVERED


class PushError(Exception):
    """A push attempt that did not reach a verdict about the token."""

    def __init__(self, reason: str, status: int | None = None, detail: str = "") -> None:
        text = f"{status} {reason}" if status is not None else reason
        super().__init__(f"{text}: {detail}" if detail else text)
        self.reason = reason
        self.status = status
        self.detail = detail


class TemporaryPushError(PushError):
    """Try again later (429, 5xx, connection loss, timeout); ``retry_after`` in seconds."""

    def __init__(
        self,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(reason, status, detail)
        self.retry_after = retry_after


class PermanentPushError(PushError):
    """This push will never be accepted as it is (bad request, credentials, topic)."""


class PushProvider(abc.ABC):
    """One push service. ``send`` is the one method that touches the network."""

    name: str

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open what the provider needs before the first push."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Close connections."""

    @abc.abstractmethod
    async def send(self, request: PushRequest) -> PushResult:
        """Send one push: DELIVERED or DEAD_TOKEN result, else raise a PushError."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header, delta-seconds or HTTP-date (RFC 9110 §10.2.3).

    A date is counted from ``now`` (UNIX seconds; the wall clock when None); a
    date already past means "retry now" (0.0). Anything else gives None.
    """
    if not value:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:  # RFC 9110 §5.6.7: an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    return seconds if seconds >= 0 else None


def redact_token(token: str) -> str:
    """A push token shortened for logs (tokens are never logged in full)."""
    if len(token) <= 12:
        return token[:2] + "\u2026"
    return f"{token[:6]}\u2026{token[-4:]}"
