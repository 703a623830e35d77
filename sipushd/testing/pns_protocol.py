"""What APNs and FCM HTTP v1 accept and how they say no, as pure functions for the mock.

Each check returns None (acceptable) or a `Failure`. Sources: Apple's "Sending
notification requests to APNs" and "Handling notification responses from APNs", Google's
FCM v1 `projects.messages` reference and `ErrorCode` enum, RFC 7523 §2.1 for the OAuth2
JWT-bearer grant; see PUSH-PROTOCOLS.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


class Failure(NamedTuple):
    """How a request fails: status, APNs reason or FCM errorCode, message, bad FCM field."""

    status: int
    reason: str | None
    message: str = ""
    field: str | None = None


APNS_PREFIX = "/3/device/"
FCM_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
APNS_TOKEN_MAX_AGE = 3600.0  # Apple rejects provider tokens older than one hour
APNS_TOKEN_SKEW = 300.0

_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")
_APNS_PUSH_TYPES = frozenset(
    {"alert", "background", "location", "voip", "complication", "fileprovider", "mdm"}
    | {"liveactivity", "pushtotalk", "widgets", "controls"}
)
# Push types whose apns-topic must be the bundle id plus a suffix (Apple's header docs).
_APNS_TOPIC_SUFFIX = {
    "voip": ".voip",
    "complication": ".complication",
    "fileprovider": ".pushkit.fileprovider",
    "location": ".location-query",
    "liveactivity": ".push-type.liveactivity",
    "pushtotalk": ".voip-ptt",
}
_APNS_REASONS = {
    400: "BadDeviceToken",
    403: "InvalidProviderToken",
    405: "MethodNotAllowed",
    410: "Unregistered",
    413: "PayloadTooLarge",
    429: "TooManyRequests",
    500: "InternalServerError",
    503: "ServiceUnavailable",
}
_FCM_MESSAGE_FIELDS = frozenset(
    {"name", "data", "notification", "android", "webpush", "apns", "fcm_options"}
    | {"token", "topic", "condition"}
)
_FCM_TTL = re.compile(r"\d{1,12}(?:\.\d{1,9})?s")
FCM_SCOPES = frozenset(
    {
        "https://www.googleapis.com/auth/firebase.messaging",
        "https://www.googleapis.com/auth/cloud-platform",
    }
)
# HTTP status -> (google.rpc status, default FcmError errorCode, message)
_FCM_ERRORS = {
    400: ("INVALID_ARGUMENT", "INVALID_ARGUMENT", "Request contains an invalid argument."),
    401: ("UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Request had invalid credentials."),
    403: ("PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
    404: ("NOT_FOUND", "UNREGISTERED", "Requested entity was not found."),
    429: ("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded for 'Send messages'."),
    500: ("INTERNAL", "INTERNAL", "Internal error encountered."),
    503: ("UNAVAILABLE", "UNAVAILABLE", "The service is currently unavailable."),
}


def apns_reason(status: int) -> str:
    """Apple's usual reason for a status (for rules that name none)."""
    return _APNS_REASONS.get(status, "InternalServerError")


def check_apns_target(method: str, token: str) -> Failure | None:
    """Method and device token of `POST /3/device/<hex token>`."""
    if method != "POST":
        return Failure(405, "MethodNotAllowed")
    if not token:
        return Failure(400, "MissingDeviceToken")
    if not _HEX.fullmatch(token):
        return Failure(400, "BadDeviceToken")
    return None


def check_apns_headers(headers: Mapping[str, str], body: bytes, payload: Any) -> Failure | None:
    """The apns-* headers and the payload, in Apple's order of checks."""
    topic = headers.get("apns-topic")
    push_type = headers.get("apns-push-type")
    if not topic:
        return Failure(400, "MissingTopic")
    if push_type is not None and push_type not in _APNS_PUSH_TYPES:
        return Failure(400, "InvalidPushType")
    suffix = _APNS_TOPIC_SUFFIX.get(push_type or "")
    if suffix is not None and not topic.endswith(suffix):
        return Failure(400, "DeviceTokenNotForTopic")
    priority = headers.get("apns-priority")
    # 10 (immediate) is an error for background pushes, which must use 5.
    if priority is not None and (
        priority not in ("1", "5", "10") or (priority == "10" and push_type == "background")
    ):
        return Failure(400, "BadPriority")
    expiration = headers.get("apns-expiration")
    if expiration is not None and not (expiration.isascii() and expiration.isdigit()):
        return Failure(400, "BadExpirationDate")
    collapse_id = headers.get("apns-collapse-id")
    if collapse_id is not None and len(collapse_id.encode()) > 64:
        return Failure(400, "BadCollapseId")
    apns_id = headers.get("apns-id")
    if apns_id is not None and not _UUID.fullmatch(apns_id):
        return Failure(400, "BadMessageId")
    if not body:
        return Failure(400, "PayloadEmpty")
    if len(body) > (5120 if push_type == "voip" else 4096):
        return Failure(413, "PayloadTooLarge")
    if not isinstance(payload, dict):
        return Failure(400, "BadPayload")  # not one of Apple's documented reasons
    return None


def load_apns_key(path: Path) -> ec.EllipticCurvePublicKey:
    """A P-256 public key from a PEM public key or an APNs .p8 private key."""
    data = Path(path).read_bytes()
    try:
        key: object = serialization.load_pem_public_key(data)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(data, None).public_key()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: not a PEM public key or an unencrypted .p8 key") from exc
    if not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"):
        raise ValueError(f"{path}: APNs keys are P-256 (ES256) keys")
    return key


def provider_token_iat(token: str, keys: Sequence[ec.EllipticCurvePublicKey]) -> float | None:
    """The iat of a well-formed ES256 provider token, its signature checked against `keys`.

    None when the token is malformed or no key verifies it; with no keys the signature
    is not checked.
    """
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        return None
    if header.get("alg") != "ES256" or not header.get("kid"):
        return None
    candidates: Sequence[ec.EllipticCurvePublicKey | None] = keys or [None]
    for key in candidates:
        try:
            if key is None:
                claims = jwt.decode(token, options={"verify_signature": False})
            else:
                claims = jwt.decode(
                    token,
                    key,
                    algorithms=["ES256"],
                    options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
                )
        except jwt.PyJWTError:
            continue
        iat = claims.get("iat")
        if not claims.get("iss") or not isinstance(iat, int | float):
            return None
        return float(iat)
    return None


def assertion_scopes(assertion: str) -> frozenset[str] | None:
    """The scopes of a service-account JWT assertion, None if it is not a usable one.

    Its signature is not checked: the mock does not know the service account's key.
    """
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        return None
    iat, exp = claims.get("iat"), claims.get("exp")
    if header.get("alg") != "RS256" or not claims.get("iss"):
        return None
    if not (isinstance(iat, int | float) and isinstance(exp, int | float)):
        return None
    # Google accepts assertions valid for at most one hour.
    if exp < time.time() or exp - iat > 3600 + 60:
        return None
    return frozenset(str(claims.get("scope", "")).split())


def check_fcm_message(body: Any) -> Failure | None:
    """FCM v1 send body: one target, string data values, android priority and ttl."""

    def invalid(message: str, field: str | None = None) -> Failure:
        return Failure(400, "INVALID_ARGUMENT", message, field)

    message = body.get("message") if isinstance(body, dict) else None
    if not isinstance(body, dict) or not isinstance(message, dict):
        return invalid("Invalid JSON payload received: a 'message' object is required.")
    unknown = sorted(set(message) - _FCM_MESSAGE_FIELDS) or sorted(
        set(body) - {"message", "validate_only"}
    )
    if unknown:
        return invalid(f'Invalid JSON payload received. Unknown name "{unknown[0]}".')
    targets = [key for key in ("token", "topic", "condition") if key in message]
    if len(targets) != 1:
        return invalid("Exactly one of message.token, message.topic, message.condition.")
    target = message[targets[0]]
    if not isinstance(target, str) or not target or any(c.isspace() for c in target):
        if targets[0] == "token":
            text = "The registration token is not a valid FCM registration token"
        else:
            text = f"Invalid value at 'message.{targets[0]}'"
        return invalid(text, f"message.{targets[0]}")
    data = message.get("data", {})
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        return invalid("Invalid value at 'message.data' (map<string, string>).", "message.data")
    android = message.get("android", {})
    if not isinstance(android, dict):
        return invalid("Invalid value at 'message.android'.", "message.android")
    priority = android.get("priority", "normal")
    if not isinstance(priority, str) or priority.lower() not in ("normal", "high"):
        field = "message.android.priority"
        return invalid(f"Invalid value at '{field}': {priority!r}", field)
    ttl = android.get("ttl", "0s")
    if not isinstance(ttl, str) or not _FCM_TTL.fullmatch(ttl):
        field = "message.android.ttl"
        return invalid(f"Invalid value at '{field}' (Duration): {ttl!r}", field)
    return None


def fcm_failure(status: int, error_code: str | None = None) -> Failure:
    """A scripted FCM failure with Google's usual errorCode and message for `status`."""
    _, default_code, message = _FCM_ERRORS.get(status, _FCM_ERRORS[500])
    return Failure(status, error_code or default_code, message)


def fcm_error_body(failure: Failure) -> dict[str, Any]:
    """Google's google.rpc.Status shape with FcmError (and BadRequest) details."""
    details: list[dict[str, Any]] = []
    if failure.reason is not None:
        fcm_error = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
        details.append({"@type": fcm_error, "errorCode": failure.reason})
    if failure.field is not None:
        violation = {"field": failure.field, "description": failure.message}
        bad_request = "type.googleapis.com/google.rpc.BadRequest"
        details.append({"@type": bad_request, "fieldViolations": [violation]})
    error: dict[str, Any] = {
        "code": failure.status,
        "message": failure.message,
        "status": _FCM_ERRORS.get(failure.status, ("UNKNOWN",))[0],
    }
    if details:
        error["details"] = details
    return {"error": error}
