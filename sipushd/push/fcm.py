"""FCM HTTP v1 provider: service-account OAuth2 token, data-only messages over HTTP/2.

The access token comes from the JWT-bearer grant (RFC 7523 §2.1): an RS256
assertion signed with google-auth's signer, POSTed to the account's
``token_uri`` with httpx (async, so the event loop never blocks), cached
and refreshed in the background five minutes before it expires. Messages go to
``{endpoint}/v1/projects/{project}/messages:send``.

A push is the hot path: its URL is parsed once per project, its headers are
a list built once per access token, and it goes straight to the transport
(``H2Transport.post``: no ``httpx.Request`` or ``httpx.Response`` built),
skipping what ``AsyncClient.post`` redoes for every request and FCM never uses
(URL merging, default headers, cookie extraction, auth and redirect handling).
That transport is ``h2transport.H2Transport``: HTTP/2 with ``h2`` on the event loop's own TLS
transport, writes corked so that concurrent pushes share TLS records and
system calls on one connection, and the HPACK Huffman coding of the ~1 KB
access token done once per token, not once per push (``hpack_cache``).
The token endpoint, which may answer HTTP/1.1 only, is reached with an
``httpx.AsyncClient`` on httpx's own transport (``netbackend``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import structlog
from google.auth import crypt as google_crypt
from google.auth import jwt as google_jwt
from hpack import NeverIndexedHeaderTuple

from sipushd import __version__
from sipushd.core.payload import FcmPush, PayloadError, PushRequest, build_fcm
from sipushd.push.base import (
    PermanentPushError,
    PushOutcome,
    PushProvider,
    PushResult,
    TemporaryPushError,
    parse_retry_after,
)
from sipushd.push.h2transport import H2Answer, H2Transport
from sipushd.push.netbackend import AsyncioHTTPTransport
from sipushd.push.settings import FCM_SCOPE, FcmAppSettings, fcm_endpoint_url
from sipushd.push.tls import client_context

JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME = 3600
REFRESH_MARGIN = 300.0  # refresh in the background this long before expiry
EXPIRY_MARGIN = 60.0  # stop sending a token this long before it expires
REFRESH_RETRY = 10.0  # after a failed background refresh
# FCM errorCode / status values meaning the token is gone for good.
DEAD_TOKEN_CODES = {"UNREGISTERED", "NOT_FOUND"}
TIMEOUT = httpx.Timeout(10.0)
log = structlog.get_logger("sipushd.push")
# json.dumps with these options builds an encoder per call: one, made once.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_STATIC_HEADERS = [
    (b"content-type", b"application/json"),
    (b"user-agent", f"sipushd/{__version__}".encode()),
]


class AccessTokenSource:
    """OAuth2 access tokens for one service account, fetched with the JWT-bearer grant.

    A push reads the cached token without waiting. From ``REFRESH_MARGIN``
    before the token's expiry a new one is fetched in the background while
    pushes keep using the old one; a push waits only when no usable token
    is left (first push, after a 401, or after the refreshes failed until
    ``EXPIRY_MARGIN`` before expiry). There is one fetch at a time however
    many pushes wait, and a failed background refresh is tried again after
    ``REFRESH_RETRY`` seconds, not on every push.
    """

    def __init__(
        self,
        account: Mapping[str, Any],
        client: httpx.AsyncClient,
        clock: Callable[[], float] = time.time,
    ) -> None:
        signer_cls = google_crypt.RSASigner
        self._signer = signer_cls.from_service_account_info(account)  # type: ignore[no-untyped-call]
        self._email = str(account["client_email"])
        self.token_uri = str(account.get("token_uri") or DEFAULT_TOKEN_URI)
        self._client = client
        self._clock = clock
        self._token: str | None = None
        self._refresh_at = 0.0  # a background fetch starts from here on
        self._expires_at = 0.0  # the token is not sent from here on
        self._fetching: asyncio.Task[str] | None = None

    @property
    def fetching(self) -> asyncio.Task[str] | None:
        """The token fetch in progress, if any."""
        return self._fetching

    def invalidate(self) -> None:
        """Forget the cached token (FCM answered 401)."""
        self._token = None

    async def token(self) -> str:
        """A usable access token: the cached one at once, else the result of the fetch."""
        now = self._clock()
        token = self._token
        if token is not None and now < self._expires_at:
            if now >= self._refresh_at and self._fetching is None:
                self._start_fetch()
            return token
        # Shielded: a push giving up (its deadline) must not cancel the others' fetch.
        return await asyncio.shield(self._fetching or self._start_fetch())

    async def stop(self) -> None:
        """Cancel a fetch in progress."""
        task = self._fetching
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    def _start_fetch(self) -> asyncio.Task[str]:
        task = asyncio.get_running_loop().create_task(self._fetch_and_store())
        task.add_done_callback(self._fetch_done)
        self._fetching = task
        return task

    async def _fetch_and_store(self) -> str:
        token, lifetime = await self._fetch()
        now = self._clock()
        self._token = token
        self._refresh_at = now + lifetime - min(REFRESH_MARGIN, lifetime / 2)
        self._expires_at = now + lifetime - min(EXPIRY_MARGIN, lifetime / 4)
        return token

    def _fetch_done(self, task: asyncio.Task[str]) -> None:
        self._fetching = None
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so never "never retrieved"
        if exc is not None and self._token is not None:
            # A background refresh failed; the token in hand still works for a while.
            self._refresh_at = self._clock() + REFRESH_RETRY
            log.warning("FCM access token refresh failed", token_uri=self.token_uri, error=str(exc))

    def assertion(self, now: float) -> str:
        """The signed RS256 assertion for the token request (RFC 7523 §3)."""
        claims = {
            "iss": self._email,
            "scope": FCM_SCOPE,
            "aud": self.token_uri,
            "iat": int(now),
            "exp": int(now) + ASSERTION_LIFETIME,
        }
        encoded: bytes = google_jwt.encode(self._signer, claims)  # type: ignore[no-untyped-call]
        return encoded.decode()

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": JWT_BEARER_GRANT, "assertion": self.assertion(self._clock())}
        try:
            response = await self._client.post(self.token_uri, data=form)
        except httpx.TransportError as exc:
            raise TemporaryPushError("oauth2_unreachable", None, None, _text(exc)) from exc
        if response.status_code != 200:
            status = response.status_code
            detail = str(_json(response).get("error") or response.reason_phrase)
            if status == 429 or status >= 500:
                retry = parse_retry_after(response.headers.get("retry-after"))
                raise TemporaryPushError("oauth2_unavailable", status, retry, detail)
            raise PermanentPushError("oauth2_rejected", status, detail)
        body = _json(response)
        try:
            return str(body["access_token"]), float(body.get("expires_in", 3600))
        except (KeyError, TypeError, ValueError) as exc:
            raise TemporaryPushError("oauth2_malformed", 200, None, str(body)[:200]) from exc


class _App:
    """One Firebase project: its transports, access tokens and pre-built request parts."""

    def __init__(self, settings: FcmAppSettings, clock: Callable[[], float]) -> None:
        account = json.loads(Path(settings.service_account_file).read_text())
        self.settings = settings
        self.url = httpx.URL(
            f"{fcm_endpoint_url(settings.endpoint)}/v1/projects/{settings.project_id}/messages:send"
        )
        # Pushes: HTTP/2 only (FCM HTTP v1 speaks it), on a context of their own offering "h2".
        self.push_transport = H2Transport(client_context(settings.ca_file, alpn=("h2",)))
        # The token endpoint: any HTTP version. httpcore sets ALPN on this context itself.
        context = client_context(settings.ca_file, alpn=())
        self.transport = AsyncioHTTPTransport(context, http2=True)
        self.client = httpx.AsyncClient(transport=self.transport, trust_env=False, timeout=TIMEOUT)
        self.tokens = AccessTokenSource(account, self.client, clock)
        self.timeouts = TIMEOUT.as_dict()
        self._headers_token = ""
        self._headers: list[tuple[bytes, bytes]] = []

    def headers(self, access_token: str) -> list[tuple[bytes, bytes]]:
        """The request headers for ``access_token``, rebuilt only when the token changes."""
        if access_token != self._headers_token:
            # Never indexed (RFC 7541 §7.1.3), as h2 sends authorization by default.
            authorization = NeverIndexedHeaderTuple(
                b"authorization", f"Bearer {access_token}".encode()
            )
            self._headers = [authorization, *_STATIC_HEADERS]
            self._headers_token = access_token
        return self._headers


class FcmProvider(PushProvider):
    """Pushes to Android apps through FCM HTTP v1; apps chosen by project id."""

    name = "fcm"

    def __init__(
        self, apps: Sequence[FcmAppSettings], *, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock
        self._apps = {settings.project_id: _App(settings, clock) for settings in apps}

    async def stop(self) -> None:
        """Cancel token fetches and close the HTTP clients."""
        for app in self._apps.values():
            await app.tokens.stop()
            await app.push_transport.aclose()
            await app.client.aclose()

    async def send(self, request: PushRequest) -> PushResult:
        """Send one data message and classify FCM's answer."""
        app = self._apps.get(request.app_id)
        if app is None:
            raise PermanentPushError("unknown_app", None, f"no FCM project {request.app_id}")
        try:
            push = build_fcm(request, self._clock(), app.settings.template)
        except PayloadError as exc:
            raise PermanentPushError("invalid_request", None, str(exc)) from exc
        answer = await self._post(app, request.token, push)
        return self._classify(app, answer)

    async def _post(self, app: _App, token: str, push: FcmPush) -> H2Answer:
        """The network call: POST messages:send with a Bearer access token."""
        access_token = await app.tokens.token()
        body = _ENCODER.encode(push.message(token)).encode()
        headers = app.headers(access_token)
        try:
            return await app.push_transport.post(app.url, headers, body, app.timeouts)
        except httpx.TransportError as exc:
            raise TemporaryPushError("connection", None, None, _text(exc)) from exc

    def _classify(self, app: _App, answer: H2Answer) -> PushResult:
        status = answer.status
        body = _json_body(answer.body)
        if status == 200:
            name = body.get("name")
            return PushResult(PushOutcome.DELIVERED, self.name, status, push_id=str(name or ""))
        code, message, fields = _error_details(body)
        reason = code or httpx.codes.get_reason_phrase(status)
        if status == 404 and code in DEAD_TOKEN_CODES:
            return PushResult(PushOutcome.DEAD_TOKEN, self.name, status, reason)
        if status == 400 and code == "INVALID_ARGUMENT" and _about_token(message, fields):
            return PushResult(PushOutcome.DEAD_TOKEN, self.name, status, reason)
        if status == 401:
            app.tokens.invalidate()
            raise TemporaryPushError(reason, status)
        if status == 429 or status >= 500:
            retry = parse_retry_after(answer.header(b"retry-after"))
            raise TemporaryPushError(reason, status, retry)
        raise PermanentPushError(reason, status, message)


def _json(response: httpx.Response) -> dict[str, Any]:
    return _json_body(response.content)


def _json_body(content: bytes) -> dict[str, Any]:
    """The JSON object in ``content``; {} for anything else (as ``httpx.Response.json``)."""
    try:
        body = json.loads(content)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_details(body: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    """(errorCode or status, message, fieldViolations fields) from a google.rpc.Status body."""
    error = body.get("error")
    if not isinstance(error, dict):
        return "", "", []
    code = str(error.get("status") or "")
    fields: list[str] = []
    for detail in error.get("details") or ():
        if not isinstance(detail, dict):
            continue
        if detail.get("errorCode"):
            code = str(detail["errorCode"])  # FcmError: more precise than status
        for violation in detail.get("fieldViolations") or ():
            if isinstance(violation, dict):
                fields.append(str(violation.get("field", "")))
    return code, str(error.get("message") or ""), fields


def _about_token(message: str, fields: Sequence[str]) -> bool:
    """True when an INVALID_ARGUMENT answer is about the registration token, not the message."""
    return "message.token" in fields or "registration token" in message.lower()


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
