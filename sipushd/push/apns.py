"""APNs provider: aioapns over HTTP/2, token (.p8) or certificate auth, several apps.

aioapns keeps Apple's host and port as class attributes of its protocol
classes; ``_EndpointPool`` builds a protocol subclass per endpoint instead,
so production, sandbox and any ``https://host:port`` (a test service) go
through the same aioapns code. The pool makes one attempt per push (aioapns'
own loop sleeps a second between attempts; the dispatcher retries instead).

The ES256 provider token is shared by every connection of one key and
refreshed every 40 minutes: Apple rejects tokens older than 60 minutes
(ExpiredProviderToken) and updates more often than every 20 minutes
(TooManyProviderTokenUpdates).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import jwt
from aioapns.common import NotificationRequest, NotificationResult, PushType
from aioapns.connection import (
    APNsBaseClientProtocol,
    APNsBaseConnectionPool,
    APNsTLSClientProtocol,
    AuthorizationHeaderProvider,
)
from aioapns.exceptions import ConnectionClosed
from aioapns.exceptions import ConnectionError as ApnsConnectionError
from cryptography.hazmat.primitives.asymmetric.ec import EllipticCurvePrivateKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from h2.exceptions import FlowControlError, NoAvailableStreamIDError
from hpack import Encoder

from sipushd.core.payload import ApnsPush, PayloadError, PushRequest, build_apns
from sipushd.push.base import (
    PermanentPushError,
    PushOutcome,
    PushProvider,
    PushResult,
    TemporaryPushError,
    parse_retry_after,
)
from sipushd.push.settings import ApnsAppSettings, apns_endpoint_url
from sipushd.push.tls import client_context

# Answers meaning "this token will never work again": drop the binding.
DEAD_TOKEN_REASONS = {
    (410, "Unregistered"),
    (400, "BadDeviceToken"),
    (400, "DeviceTokenNotForTopic"),
}
TOKEN_REFRESH_AFTER = 40 * 60.0
TOKEN_MIN_AGE = 20 * 60.0


class ProviderTokenSigner(AuthorizationHeaderProvider):
    """The ``authorization: bearer <JWT>`` header for one .p8 key, shared across connections."""

    def __init__(
        self, key_pem: bytes, key_id: str, team_id: str, clock: Callable[[], float] = time.time
    ) -> None:
        key = load_pem_private_key(key_pem, password=None)
        if not isinstance(key, EllipticCurvePrivateKey):
            raise ValueError(f"APNs key {key_id}: not an EC (P-256) private key")
        self._key = key
        self.key_id = key_id
        self.team_id = team_id
        self._clock = clock
        self._issued_at: float | None = None
        self._header = ""

    def get_header(self) -> str:
        """The current header, signing a new token when the old one is 40 minutes old."""
        now = self._clock()
        if self._issued_at is None or now - self._issued_at >= TOKEN_REFRESH_AFTER:
            self._issued_at = now
            token = jwt.encode(
                {"iss": self.team_id, "iat": int(now)},
                self._key,
                algorithm="ES256",
                headers={"kid": self.key_id},
            )
            self._header = f"bearer {token}"
        return self._header

    def invalidate(self) -> bool:
        """Sign afresh on next use if the token is at least 20 minutes old; True if so."""
        if self._issued_at is not None and self._clock() - self._issued_at < TOKEN_MIN_AGE:
            return False
        self._issued_at = None
        return True


class _PlainEncoder(Encoder):
    """HPACK encoder writing string literals without Huffman coding (RFC 7541 §5.2).

    Every push carries fresh values (device token path, apns-id, expiration)
    and pure-Python Huffman coding of them costs more CPU than the push's
    other HTTP/2 work; the bytes saved are few.
    """

    def encode(self, headers: Any, huffman: bool = False) -> bytes:
        """Header block for ``headers``, literals sent as raw octets."""
        block: bytes = super().encode(headers, huffman=False)
        return block


class _Answer(NotificationResult):
    """aioapns' result plus the answer's ``retry-after`` header, which aioapns drops."""

    __slots__ = ("retry_after",)

    def __init__(self, result: NotificationResult, retry_after: str | None) -> None:
        super().__init__(
            result.notification_id, result.status, result.description, result.timestamp
        )
        self.retry_after = retry_after


class _ClientProtocol(APNsTLSClientProtocol):
    """aioapns protocol that forgets a request whose caller gave up (timeout, cancel).

    It also keeps each answer's ``retry-after`` header (keyed by ``apns-id``,
    as aioapns matches answers) for the result. The connection still closes
    after ``INACTIVITY_TIME`` seconds without a frame sent or received, but
    through one timer that is pushed back when it fires, not a new timer per
    frame as in aioapns.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.encoder = _PlainEncoder()
        self._last_activity = 0.0
        self.retry_after: dict[str, str] = {}

    def refresh_inactivity_timer(self) -> None:
        """Note activity now; start the idle timer if none runs."""
        self._last_activity = self.loop.time()
        if self.inactivity_timer is None:
            idle_at = self._last_activity + self.INACTIVITY_TIME
            self.inactivity_timer = self.loop.call_at(idle_at, self._check_inactivity)

    def _check_inactivity(self) -> None:
        idle_at = self._last_activity + self.INACTIVITY_TIME
        if self.loop.time() < idle_at:
            self.inactivity_timer = self.loop.call_at(idle_at, self._check_inactivity)
        else:
            self.close()

    def on_response_received(self, headers: dict[bytes, bytes]) -> None:
        """Keep a waiting request's ``retry-after`` (RFC 9110 §10.2.3); aioapns does the rest."""
        value = headers.get(b"retry-after")
        if value is not None:
            notification_id = headers.get(b"apns-id", b"").decode("utf8")
            if notification_id in self.requests:  # not for an abandoned request: it would leak
                self.retry_after[notification_id] = value.decode("latin-1")
        super().on_response_received(headers)

    async def send_notification(self, request: NotificationRequest) -> _Answer:
        try:
            result: NotificationResult = await super().send_notification(request)
        except asyncio.CancelledError:
            # A late answer must not complete a cancelled future inside data_received.
            self.requests.pop(request.notification_id, None)
            self.request_statuses.pop(request.notification_id, None)
            self.retry_after.pop(request.notification_id, None)
            raise
        return _Answer(result, self.retry_after.pop(request.notification_id, None))


class _EndpointPool(APNsBaseConnectionPool):
    """aioapns connection pool for one endpoint URL, one attempt per push."""

    def __init__(
        self,
        url: str,
        ssl_context: ssl.SSLContext,
        auth: AuthorizationHeaderProvider | None,
        max_connections: int,
    ) -> None:
        super().__init__(max_connections=max_connections, max_connection_attempts=1)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError(f"APNs endpoint must be https://host[:port], not {url!r}")
        attrs = {"APNS_SERVER": parts.hostname, "APNS_PORT": parts.port or 443}
        self.protocol_class = type(f"APNsProtocol_{parts.netloc}", (_ClientProtocol,), attrs)
        self.ssl_context = ssl_context
        self.auth = auth
        self.last_error: BaseException | None = None

    async def create_connection(self) -> APNsBaseClientProtocol:
        # aioapns types on_connection_lost as NoReturn; discard_connection returns None.
        lost = self.discard_connection
        factory = partial(self.protocol_class, "", self.loop, lost, self.auth)  # type: ignore[arg-type]
        try:
            _, protocol = await self.loop.create_connection(
                factory,
                host=self.protocol_class.APNS_SERVER,
                port=self.protocol_class.APNS_PORT,
                ssl=self.ssl_context,
            )
        except Exception as exc:
            self.last_error = exc
            raise
        return cast(APNsBaseClientProtocol, protocol)

    async def send_once(self, request: NotificationRequest) -> _Answer:
        """Send on a free connection (opening one if needed); raise on connection trouble."""
        connection = cast(_ClientProtocol, await self.acquire())  # made by create_connection
        try:
            result = await connection.send_notification(request)
        except NoAvailableStreamIDError:
            connection.close()
            raise
        return result

    async def aclose(self) -> None:
        """Close every connection and wait until they are gone."""
        self.close()
        for _ in range(100):
            if not self.connections:
                return
            await asyncio.sleep(0.01)


class _App:
    """One configured app: its settings, credentials and one pool per endpoint URL."""

    def __init__(self, settings: ApnsAppSettings, signer: ProviderTokenSigner | None) -> None:
        self.settings = settings
        self.signer = signer
        self.ssl_context = client_context(settings.ca_file, cert_file=settings.cert_file)
        self.pools: dict[str, _EndpointPool] = {}

    def pool(self, sandbox: bool) -> _EndpointPool:
        url = apns_endpoint_url(self.settings.endpoint, sandbox)
        pool = self.pools.get(url)
        if pool is None:
            pool = _EndpointPool(url, self.ssl_context, self.signer, self.settings.max_connections)
            self.pools[url] = pool
        return pool


class ApnsProvider(PushProvider):
    """Pushes to iOS apps through APNs; apps chosen by team id + bundle id."""

    name = "apns"

    def __init__(
        self, apps: Sequence[ApnsAppSettings], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        signers: dict[tuple[str, str], ProviderTokenSigner] = {}
        self._apps: dict[tuple[str, str], _App] = {}
        for settings in apps:
            signer = None
            if settings.key_file is not None and settings.key_id:
                # One key serves every app of the team: share its token.
                key = (settings.team_id, settings.key_id)
                if key not in signers:
                    pem = Path(settings.key_file).read_bytes()
                    team, key_id = key
                    signers[key] = ProviderTokenSigner(pem, key_id, team, clock)
                signer = signers[key]
            self._apps[(settings.team_id, settings.bundle_id)] = _App(settings, signer)

    async def stop(self) -> None:
        """Close every connection."""
        for app in self._apps.values():
            for pool in app.pools.values():
                await pool.aclose()
            app.pools.clear()

    def _app_for(self, request: PushRequest) -> _App:
        bundle = request.app_id.removesuffix(".voip")
        if request.team_id:
            app = self._apps.get((request.team_id, bundle))
            if app is not None:
                return app
        else:
            matches = [a for (_, b), a in self._apps.items() if b == bundle]
            if len(matches) == 1:
                return matches[0]
        detail = f"no APNs app {request.team_id}.{bundle}"
        raise PermanentPushError("unknown_app", None, detail)

    async def send(self, request: PushRequest) -> PushResult:
        """Send one push and classify APNs' answer."""
        app = self._app_for(request)
        try:
            push = build_apns(request, self._clock(), app.settings.template)
        except PayloadError as exc:
            raise PermanentPushError("invalid_request", None, str(exc)) from exc
        pool = app.pool(request.sandbox)
        result = await self._post(pool, request.token, push)
        return self._classify(app, result)

    async def _post(self, pool: _EndpointPool, token: str, push: ApnsPush) -> _Answer:
        """The network call: one HTTP/2 POST /3/device/<token>."""
        note = NotificationRequest(
            device_token=token,
            message=dict(push.payload),
            notification_id=str(uuid.uuid4()),
            # aioapns sends apns-expiration = now + time_to_live.
            time_to_live=max(0, push.expiration - int(time.time())),
            priority=push.priority,
            collapse_key=push.collapse_id,
            push_type=PushType(push.push_type.value),
            apns_topic=push.topic,
        )
        try:
            return await pool.send_once(note)
        except ApnsConnectionError as exc:
            detail = _describe(pool.last_error)
            raise TemporaryPushError("connect_failed", None, None, detail) from exc
        except (ConnectionClosed, NoAvailableStreamIDError, FlowControlError, OSError) as exc:
            raise TemporaryPushError("connection_lost", None, None, _describe(exc)) from exc

    def _classify(self, app: _App, result: _Answer) -> PushResult:
        status = int(result.status)
        reason = result.description or ""
        if status == 200:
            return PushResult(
                PushOutcome.DELIVERED, self.name, status, push_id=result.notification_id
            )
        if (status, reason) in DEAD_TOKEN_REASONS:
            return PushResult(
                PushOutcome.DEAD_TOKEN, self.name, status, reason, result.notification_id
            )
        if status == 429 or status >= 500:
            retry = parse_retry_after(result.retry_after, self._clock())
            raise TemporaryPushError(reason, status, retry)
        expired = status == 403 and reason == "ExpiredProviderToken"
        if expired and app.signer is not None and app.signer.invalidate():
            raise TemporaryPushError(reason, status)
        raise PermanentPushError(reason or "rejected", status)


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
