"""Frozen settings for the push providers and dispatcher.

The push layer never reads the config file: the composition root (app,
push-test) maps the validated config onto these dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sipushd.core.payload import PayloadTemplate

APNS_PRODUCTION = "https://api.push.apple.com:443"
APNS_SANDBOX = "https://api.sandbox.push.apple.com:443"
FCM_PRODUCTION = "https://fcm.googleapis.com"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"


@dataclass(frozen=True)
class ApnsAppSettings:
    """One iOS app: token auth (key_file + key_id + team_id) or certificate auth (cert_file).

    ``endpoint``: "production" (bindings marked sandbox, Linphone's
    ``apns.dev``, go to the sandbox host), "sandbox", or "https://host:port"
    (every push of this app goes there). ``ca_file``: an extra CA to trust.
    """

    team_id: str
    bundle_id: str
    key_file: Path | None = None
    key_id: str | None = None
    cert_file: Path | None = None
    endpoint: str = "production"
    ca_file: Path | None = None
    template: PayloadTemplate = field(default_factory=PayloadTemplate)
    max_connections: int = 4

    def __post_init__(self) -> None:
        token_auth = self.key_file is not None and bool(self.key_id)
        if token_auth == (self.cert_file is not None):
            raise ValueError(
                f"APNs app {self.bundle_id}: give key_file + key_id (token auth) "
                "or cert_file (certificate auth), not both or neither"
            )


@dataclass(frozen=True)
class FcmAppSettings:
    """One Firebase project: service-account JSON, endpoint "production" or a URL."""

    project_id: str
    service_account_file: Path
    endpoint: str = "production"
    ca_file: Path | None = None
    template: PayloadTemplate = field(default_factory=PayloadTemplate)


@dataclass(frozen=True)
class DispatcherSettings:
    """Queue bound, per-provider concurrency, attempt timeout and retry backoff (seconds).

    ``max_queue`` bounds the pushes accepted and not yet answered (waiting for
    a slot, in flight, or between retries); ``concurrency`` the requests in
    flight per provider name; ``attempt_timeout`` one request (a slow answer
    is retried if the deadline allows).
    """

    max_queue: int = 10_000
    concurrency: int = 64
    attempt_timeout: float = 10.0
    backoff_initial: float = 0.2
    backoff_factor: float = 2.0
    backoff_max: float = 5.0
    deduplicate: bool = True


def apns_endpoint_url(endpoint: str, sandbox: bool) -> str:
    """The base URL for an APNs app endpoint setting and a binding's sandbox flag."""
    if endpoint == "production":
        return APNS_SANDBOX if sandbox else APNS_PRODUCTION
    if endpoint == "sandbox":
        return APNS_SANDBOX
    return endpoint.rstrip("/")


def fcm_endpoint_url(endpoint: str) -> str:
    """The base URL for an FCM endpoint setting."""
    return FCM_PRODUCTION if endpoint == "production" else endpoint.rstrip("/")
