"""The config file's `push` section: iOS apps (APNs), Firebase projects (FCM), mock.

Part of the schema in `sipushd.config_schema`, with the same rules: unknown keys are
errors, and each rule names the key it blames. An APNs app authenticates with a
token key (.p8, key_file + key_id) or a certificate (cert_file), never both.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BeforeValidator, Field, model_validator

from sipushd.config_fields import Issues, Model, PublicFile, Seconds, SecretFile, value_error

__all__ = ["ApnsApp", "FcmApp", "MockPushConfig", "PushConfig"]

_APPLE_ID = re.compile(r"[A-Za-z0-9]{1,32}")  # Apple issues 10 characters
_BUNDLE_ID = re.compile(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_FCM_PROJECT = re.compile(r"[a-z][a-z0-9-]{4,28}[a-z0-9]")


def _check_endpoint(value: Any) -> Any:
    if isinstance(value, str) and value not in ("production", "sandbox"):
        parts = urlsplit(value)
        if parts.scheme != "https" or not parts.hostname:
            raise value_error(
                f"bad endpoint {value!r}: expected production, sandbox or https://HOST:PORT"
            )
    return value


def _check_fcm_endpoint(value: Any) -> Any:
    if value == "sandbox":
        raise value_error("FCM has no sandbox: expected production or https://HOST:PORT")
    return _check_endpoint(value)


def _check_pattern(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: Any) -> Any:
        if isinstance(value, str) and not pattern.fullmatch(value):
            raise value_error(f"bad {what} {value!r}")
        return value

    return BeforeValidator(check)


class ApnsApp(Model):
    """One iOS app: token auth (key_file + key_id) or certificate auth (cert_file)."""

    team_id: Annotated[str, _check_pattern(_APPLE_ID, "team id (letters and digits)")]
    bundle_id: Annotated[str, _check_pattern(_BUNDLE_ID, "bundle id")]
    key_file: SecretFile | None = None
    key_id: Annotated[str, _check_pattern(_APPLE_ID, "key id (letters and digits)")] | None = None
    cert_file: SecretFile | None = None  # PEM with certificate and private key
    endpoint: Annotated[str, BeforeValidator(_check_endpoint)] = "production"
    ca_file: PublicFile | None = None
    payload_template: dict[str, str] | None = None

    @property
    def token_auth(self) -> bool:
        """True for .p8 token auth, False for certificate auth."""
        return self.key_file is not None

    @model_validator(mode="after")
    def _credentials(self) -> Self:
        issues = Issues()
        if self.bundle_id.endswith(".voip"):
            issues.add(("bundle_id",), "write the app's bundle id without .voip", self.bundle_id)
        if self.key_file is not None and self.cert_file is not None:
            issues.add(("cert_file",), "use either key_file + key_id or cert_file, not both")
        elif self.key_file is None and self.cert_file is None:
            issues.add(("key_file",), "required: key_file + key_id (token auth) or cert_file")
        if self.key_file is not None and self.key_id is None:
            issues.add(("key_id",), "required with key_file")
        if self.key_id is not None and self.key_file is None:
            issues.add(("key_id",), "only used with key_file")
        issues.raise_any("ApnsApp")
        return self


class FcmApp(Model):
    """One Firebase project (FCM HTTP v1 with a service account)."""

    project_id: Annotated[str, _check_pattern(_FCM_PROJECT, "project id")]
    service_account_file: SecretFile
    endpoint: Annotated[str, BeforeValidator(_check_fcm_endpoint)] = "production"
    ca_file: PublicFile | None = None
    payload_template: dict[str, str] | None = None


class MockPushConfig(Model):
    """The in-process push recorder for local runs."""

    enabled: bool = False


class PushConfig(Model):
    """Push providers and how eagerly to wake phones (RFC 8599 §5.6)."""

    mode: Literal["always", "unreachable"] = "always"
    delay: float = Field(default=2.0, ge=0)
    call_remote_push_interval: Seconds | None = None  # repeat alert pushes while ringing
    max_queue: int = Field(default=10000, ge=1)
    concurrency: int = Field(default=100, ge=1)
    apns: list[ApnsApp] = []
    fcm: list[FcmApp] = []
    mock: MockPushConfig = MockPushConfig()

    @model_validator(mode="after")
    def _unique(self) -> Self:
        issues = Issues()
        apps: dict[tuple[str, str], int] = {}
        for index, app in enumerate(self.apns):
            key = (app.team_id, app.bundle_id)
            if key in apps:
                issues.add(("apns", index), f"same team_id and bundle_id as apns[{apps[key]}]")
            apps.setdefault(key, index)
        projects: dict[str, int] = {}
        for index, fcm in enumerate(self.fcm):
            if fcm.project_id in projects:
                issues.add(("fcm", index), f"same project_id as fcm[{projects[fcm.project_id]}]")
            projects.setdefault(fcm.project_id, index)
        issues.raise_any("PushConfig")
        return self
