"""Helpers for push tests: test identities, an APNs key made here, settings and requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sipushd.core.payload import PushKind, PushRequest, PushService
from sipushd.push.settings import ApnsAppSettings
from sipushd.testing.mock_pns import MockPushService

TEAM = "TEAM123456"
KEY_ID = "KEY1234567"
BUNDLE = "org.example.phone"
PROJECT = "sipushd-test"
TOKEN = "a1" * 32


def write_p256_key(path: Path) -> tuple[Path, Path]:
    """A fresh APNs-style .p8 (PKCS#8 P-256) key and its public key, as the test's own."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = path.with_suffix(".pub.pem")
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path, public


def apns_app(pns: MockPushService, key: Path, **changes: object) -> ApnsAppSettings:
    values: dict[str, object] = {
        "team_id": TEAM,
        "bundle_id": BUNDLE,
        "key_file": key,
        "key_id": KEY_ID,
        "endpoint": pns.base_url,
        "ca_file": pns.ca_file,
    }
    values.update(changes)
    return ApnsAppSettings(**values)  # type: ignore[arg-type]


MakeRequest = Callable[..., PushRequest]


def make_request(
    kind: PushKind = PushKind.CALL, ttl: float = 30.0, **changes: object
) -> PushRequest:
    """An APNs call push to TOKEN unless told otherwise."""
    values: dict[str, object] = {
        "kind": kind,
        "provider": "apns",
        "token": TOKEN,
        "app_id": BUNDLE,
        "team_id": TEAM,
        "deadline": time.time() + ttl,
        "service": PushService.REMOTE,
        "caller_uri": "sip:alice@example.org",
        "caller_display": "Alice",
        "call_id": f"call-{time.monotonic_ns()}@example.org",
        "instance": "<urn:uuid:00000000-0000-0000-0000-00000000abcd>",
    }
    values.update(changes)
    return PushRequest(**values)  # type: ignore[arg-type]
