"""The mock push service's provider endpoints: APNs `/3/device/`, FCM `messages:send`, `/token`.

Each endpoint checks a request as Apple or Google would (`pns_protocol`), asks the
service's scripted rules (`pns_rules`) how to answer one that passes, hands the push
to the service to record, then answers framed as the real service does
(PUSH-PROTOCOLS.md): every APNs answer carries `apns-id`, a 200 has no body, errors
are `{"reason": ...}` (410 adds `timestamp`); FCM errors carry `error.status` and
`details[].errorCode`. Scripted failures apply only to requests that would otherwise
succeed. Invalid JSON in an APNs payload is answered 400 `BadPayload`, a reason Apple
does not document. The recording, the control API and the command line live in `mock_pns`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipushd.testing import pns_protocol as proto
from sipushd.testing.h2server import Request, Response
from sipushd.testing.pns_rules import ResponseRule

# The service's rule lookup: (provider, token) -> (rule deciding the answer, delay).
Pick = Callable[[str, str], tuple[ResponseRule | None, float]]
# The service's recorder: (provider, request, token, payload, failure or None for a 200).
Record = Callable[[str, Request, str, Any, proto.Failure | None], object]

_ACCESS_TOKEN_LIFETIME = 3600


@dataclass(frozen=True, slots=True)
class _Grant:
    expires: float
    scopes: frozenset[str]


class ApnsEndpoint:
    """`POST /3/device/<token>`: APNs with token-based (JWT) provider authentication."""

    def __init__(self, pick: Pick, record: Record, public_keys: Sequence[Path] = ()) -> None:
        self._pick = pick
        self._record = record
        self._keys = [proto.load_apns_key(path) for path in public_keys]
        self._jwt_iat: dict[str, float] = {}

    async def handle(self, request: Request) -> Response:
        """Check, record and answer one APNs push."""
        apns_id = request.headers.get("apns-id") or str(uuid.uuid4())
        token = request.path.removeprefix(proto.APNS_PREFIX)
        payload = parse_json(request.body)
        failure: proto.Failure | None = proto.Failure(404, "BadPath")
        if request.path.startswith(proto.APNS_PREFIX):
            failure = (
                proto.check_apns_target(request.method, token)
                or self._check_provider_token(request.headers.get("authorization"))
                or proto.check_apns_headers(request.headers, request.body, payload)
            )
        rule, delay = (None, 0.0) if failure else self._pick("apns", token)
        if rule is not None and rule.status is not None:
            failure = proto.Failure(rule.status, rule.reason or proto.apns_reason(rule.status))
        self._record("apns", request, token, payload, failure)
        if delay:
            await asyncio.sleep(delay)
        headers = [("apns-id", apns_id), *_retry_after(rule)]
        if failure is None:
            return Response(200, tuple(headers))  # no body at all, as Apple answers
        body: dict[str, Any] = {"reason": failure.reason}
        if failure.status == 410:
            # The push's recorded time, in milliseconds as Apple sends it.
            body["timestamp"] = int(request.received_at * 1000)
        return json_response(failure.status, body, headers)

    def _check_provider_token(self, authorization: str | None) -> proto.Failure | None:
        """Token auth: `bearer <ES256 JWT>` with iss and iat, verified when keys are known."""
        if authorization is None:
            return proto.Failure(403, "MissingProviderToken") if self._keys else None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return proto.Failure(403, "InvalidProviderToken")
        iat = self._jwt_iat.get(token)
        if iat is None:
            iat = proto.provider_token_iat(token, self._keys)
            if iat is None:
                return proto.Failure(403, "InvalidProviderToken")
            if len(self._jwt_iat) > 1000:
                self._jwt_iat.clear()
            self._jwt_iat[token] = iat  # verifying ES256 per push would dominate the cost
        now = time.time()
        if now - iat > proto.APNS_TOKEN_MAX_AGE:
            return proto.Failure(403, "ExpiredProviderToken")
        if iat - now > proto.APNS_TOKEN_SKEW:
            return proto.Failure(403, "InvalidProviderToken")
        return None


class FcmEndpoint:
    """FCM HTTP v1 `messages:send` and the OAuth2 token endpoint granting its access tokens."""

    def __init__(self, pick: Pick, record: Record) -> None:
        self._pick = pick
        self._record = record
        self._grants: dict[str, _Grant] = {}
        self._message_ids = itertools.count(1)

    async def send(self, request: Request) -> Response:
        """Check, record and answer one FCM `messages:send`."""
        match = proto.FCM_PATH.fullmatch(request.path)
        if match is None or request.method != "POST":
            return json_response(
                404,
                proto.fcm_error_body(proto.Failure(404, None, "Requested entity was not found.")),
            )
        body = parse_json(request.body)
        message = body.get("message") if isinstance(body, dict) else None
        token = message.get("token") if isinstance(message, dict) else None
        token = token if isinstance(token, str) else ""
        failure = self._check_auth(request.headers.get("authorization", ""))
        failure = failure or proto.check_fcm_message(body)
        rule, delay = (None, 0.0) if failure else self._pick("fcm", token)
        if rule is not None and rule.status is not None:
            failure = proto.fcm_failure(rule.status, rule.reason)
        self._record("fcm", request, token, body, failure)
        if delay:
            await asyncio.sleep(delay)
        if failure is not None:
            return json_response(failure.status, proto.fcm_error_body(failure), _retry_after(rule))
        name = f"projects/{match.group(1)}/messages/{next(self._message_ids)}"
        return json_response(200, {"name": name})

    def _check_auth(self, authorization: str) -> proto.Failure | None:
        scheme, _, token = authorization.partition(" ")
        grant = self._grants.get(token) if scheme.lower() == "bearer" else None
        if grant is None or grant.expires < time.time():
            return proto.Failure(
                401,
                None,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        if not grant.scopes & proto.FCM_SCOPES:
            return proto.Failure(403, None, "Request had insufficient authentication scopes.")
        return None

    def token(self, request: Request) -> Response:
        """OAuth2 JWT-bearer grant (RFC 7523 §2.1), answered like Google's token endpoint."""
        form = urllib.parse.parse_qs(request.body.decode("utf-8", "replace"))
        grant_type = form.get("grant_type", [""])[0]
        if request.method != "POST" or grant_type != proto.JWT_BEARER:
            error = {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"}
            return json_response(400, error)
        scopes = proto.assertion_scopes(form.get("assertion", [""])[0])
        if scopes is None:
            description = "Invalid JWT: expected an RS256 assertion valid for at most 60 minutes"
            return json_response(400, {"error": "invalid_grant", "error_description": description})
        # Google's access tokens run to a kilobyte or more (up to 2048 bytes documented, padded
        # with dots since 2021); the client codes this header on every push, so a short
        # token would flatter it.
        access_token = "ya29.mock-" + secrets.token_urlsafe(768)
        now = time.time()
        self._grants = {t: g for t, g in self._grants.items() if g.expires > now}
        self._grants[access_token] = _Grant(now + _ACCESS_TOKEN_LIFETIME, scopes)
        answer = {
            "access_token": access_token,
            "expires_in": _ACCESS_TOKEN_LIFETIME,
            "token_type": "Bearer",
        }
        return json_response(200, answer)


def parse_json(body: bytes) -> Any:
    """The JSON document in `body`, or None if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def json_response(status: int, body: object, headers: Sequence[tuple[str, str]] = ()) -> Response:
    """A compact JSON answer with `headers` and content-type application/json."""
    data = json.dumps(body, separators=(",", ":")).encode()
    return Response(status, (*headers, ("content-type", "application/json")), data)


def _retry_after(rule: ResponseRule | None) -> list[tuple[str, str]]:
    if rule is None or rule.retry_after is None:
        return []
    return [("retry-after", rule.retry_after)]
