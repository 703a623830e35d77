"""Parse the push parameters of a REGISTER Contact into a `PushTarget`.

One job: turn Contact URI parameters into "where and how to push", or say
precisely why they are wrong. Three spellings are understood:

- RFC 8599 §4.1.1: `pn-provider` (`apns`, `fcm`, `webpush`), `pn-param`,
  `pn-prid`. For APNs `pn-param` is `TEAMID.bundle-id`, with `.voip`
  appended for PushKit (RFC 8599 §12.2); for FCM it is the project id
  (§13.2); webpush uses no `pn-param` and `pn-prid` is the push
  subscription URI (§14.2).
- Linphone's extension: `pn-provider=apns.dev` (the APNs sandbox),
  `pn-param=TEAMID.bundle.voip&remote` (the services the app has tokens for)
  and `pn-prid=TOKEN1:voip&TOKEN2:remote` (one token per service, in any order).
- The legacy Linphone form `pn-type=apple|firebase|google;pn-tok=...;app-id=...`.

Values arrive already %-unescaped from the URI parser. Errors raise
`PushParamError` whose `reason` names the problem (it goes into a 400 reason
phrase or a Warning header); a provider sipushd cannot push to raises
`UnsupportedProviderError`, answered 555 (RFC 8599 §5.6.1).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from sipushd.sip.value import Value

__all__ = [
    "PROVIDERS",
    "SERVICES",
    "PushParamError",
    "PushTarget",
    "UnsupportedProviderError",
    "is_capability_query",
    "parse_push_target",
]

PROVIDERS = ("apns", "fcm", "webpush")
SERVICES = ("voip", "remote")

# pn-provider value -> (provider, sandbox)
_PROVIDER_NAMES: dict[str, tuple[str, bool]] = {
    "apns": ("apns", False),
    "apns.dev": ("apns", True),
    "fcm": ("fcm", False),
    "webpush": ("webpush", False),
}
# legacy pn-type value -> provider
_LEGACY_TYPES: dict[str, str] = {"apple": "apns", "firebase": "fcm", "google": "fcm"}

_MAX_TOKEN = 2048
# APNs device tokens are hex; FCM registration tokens use the URL-safe base64
# alphabet plus ':'. Anything else (/, ?, %, spaces) would end up in a URL path.
_TOKEN_RE = re.compile(r"[A-Za-z0-9_\-.:~]+")
# An Apple team id: ten upper-case letters and digits (shorter ones seen in tests).
_TEAM_ID_RE = re.compile(r"[A-Z0-9]{2,20}")
_BUNDLE_RE = re.compile(r"[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)*")
_WEBPUSH_RE = re.compile(r"https?://[^\s]+", re.IGNORECASE)


class PushParamError(ValueError):
    """The push parameters of a Contact are malformed; `reason` says how."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class UnsupportedProviderError(PushParamError):
    """A push provider sipushd cannot push to (RFC 8599 §5.6.1: answer 555)."""

    def __init__(self, reason: str, provider: str) -> None:
        super().__init__(reason)
        self.provider = provider


class PushTarget(Value):
    """Where to push for one binding: provider, app, and a token per service."""

    __slots__ = ("app_id", "provider", "sandbox", "team_id", "tokens")
    _FIELDS = ("provider", "sandbox", "app_id", "team_id", "tokens")

    def __init__(
        self,
        provider: str,
        sandbox: bool,
        app_id: str,
        team_id: str | None,
        tokens: tuple[tuple[str, str], ...],
    ) -> None:
        self.provider: Final = provider
        self.sandbox: Final = sandbox
        self.app_id: Final = app_id
        self.team_id: Final = team_id
        self.tokens: Final = tokens

    def token(self, service: str) -> str | None:
        """The token for `service` ("voip" or "remote"), or None."""
        for name, value in self.tokens:
            if name == service:
                return value
        return None

    @property
    def voip_token(self) -> str | None:
        """The PushKit (APNs VoIP) token, if the app has one."""
        return self.token("voip")

    @property
    def remote_token(self) -> str | None:
        """The token for alert / data pushes, if the app has one."""
        return self.token("remote")

    @property
    def provider_label(self) -> str:
        """The provider as written in pn-provider: apns, apns.dev, fcm or webpush."""
        return "apns.dev" if self.provider == "apns" and self.sandbox else self.provider


def is_capability_query(params: Mapping[str, str | None]) -> bool:
    """True for a REGISTER that only asks which providers exist (RFC 8599 §4.1.5)."""
    p = _lower_keys(params)
    return "pn-provider" in p and "pn-prid" not in p


def parse_push_target(params: Mapping[str, str | None]) -> PushTarget | None:
    """The push target described by Contact URI params; None when there is none.

    None is also returned for a capability query (pn-provider without
    pn-prid, RFC 8599 §4.1.5) once its provider is known to be supported.
    """
    p = _lower_keys(params)
    if "pn-provider" in p:
        return _parse_rfc8599(p)
    if "pn-prid" in p or "pn-param" in p:
        raise PushParamError("pn-prid/pn-param without pn-provider")
    if "pn-type" in p:
        return _parse_legacy(p)
    if "pn-tok" in p:
        raise PushParamError("pn-tok without pn-type")
    return None


def _lower_keys(params: Mapping[str, str | None]) -> dict[str, str | None]:
    return {name.lower(): value for name, value in params.items()}


def _value(p: Mapping[str, str | None], name: str) -> str:
    value = (p.get(name) or "").strip()
    if not value:
        raise PushParamError(f"empty {name}")
    return value


def _provider(p: Mapping[str, str | None]) -> tuple[str, bool]:
    raw = _value(p, "pn-provider")
    found = _PROVIDER_NAMES.get(raw.lower())
    if found is None:
        raise UnsupportedProviderError(f"unsupported push provider {raw!r}", raw)
    return found


def _parse_rfc8599(p: Mapping[str, str | None]) -> PushTarget | None:
    provider, sandbox = _provider(p)
    if "pn-prid" not in p:
        return None  # RFC 8599 §4.1.5: capability query, nothing to push to
    prid = _value(p, "pn-prid")
    if provider == "apns":
        if "pn-param" not in p:
            raise PushParamError("missing pn-param for apns (TEAMID.bundle-id)")
        team_id, bundle, services = _split_apns_param(_value(p, "pn-param"))
        tokens = _match_tokens(prid, services, split_any_suffix=True)
        return PushTarget("apns", sandbox, bundle, team_id, tokens)
    if provider == "fcm":
        if "pn-param" not in p:
            raise PushParamError("missing pn-param for fcm (the project id)")
        project = _value(p, "pn-param")
        # FCM tokens contain ':' themselves: only a known service name is a suffix.
        tokens = _match_tokens(prid, ("remote",), split_any_suffix=False)
        return PushTarget("fcm", False, project, None, tokens)
    if not _WEBPUSH_RE.fullmatch(prid) or len(prid) > _MAX_TOKEN:
        raise PushParamError("pn-prid for webpush must be an http(s) subscription URI")
    return PushTarget("webpush", False, "", None, (("remote", prid),))


def _split_apns_param(value: str) -> tuple[str, str, tuple[str, ...]]:
    """Split `TEAMID.bundle[.voip|.remote|.voip&remote]` (RFC 8599 §12.2, Linphone)."""
    team_id, dot, rest = value.partition(".")
    if not dot or not rest:
        raise PushParamError(f"pn-param {value!r} for apns is not TEAMID.bundle-id")
    if not _TEAM_ID_RE.fullmatch(team_id):
        raise PushParamError(f"pn-param {value!r} for apns has no team id (TEAMID.bundle-id)")
    bundle, services = _split_services(rest)
    if not bundle or not _BUNDLE_RE.fullmatch(bundle):
        raise PushParamError(f"pn-param {value!r} for apns has no valid bundle id")
    return team_id, bundle, services


def _split_services(rest: str) -> tuple[str, tuple[str, ...]]:
    """Split `bundle.svc[&svc...]` into the bundle and its declared services."""
    bundle, dot, last = rest.rpartition(".")
    if "&" in last:
        services = tuple(last.split("&"))
        for service in services:
            if service not in SERVICES:
                raise PushParamError(f"unknown push service {service!r} in pn-param")
        if len(set(services)) != len(services):
            raise PushParamError("a push service is declared twice in pn-param")
        return bundle, services
    if dot and last in SERVICES:
        return bundle, (last,)
    # RFC 8599 §12.2: a bundle id without ".voip" is for alert / background pushes.
    return rest, ("remote",)


def _match_tokens(
    prid: str, services: tuple[str, ...], *, split_any_suffix: bool
) -> tuple[tuple[str, str], ...]:
    """Pair `TOKEN[:service]&...` with the declared services (Linphone's pn-prid)."""
    items = prid.split("&")
    if len(items) != len(services):
        raise PushParamError(
            f"pn-prid has {len(items)} token(s) but pn-param declares "
            f"{len(services)} service(s) ({', '.join(services)})"
        )
    found: dict[str, str] = {}
    for item in items:
        token, service = _split_token(item, services, split_any_suffix=split_any_suffix)
        if service in found:
            raise PushParamError(f"pn-prid has two tokens for service {service!r}")
        found[service] = token
    return tuple((service, found[service]) for service in services)


def _split_token(
    item: str, services: tuple[str, ...], *, split_any_suffix: bool
) -> tuple[str, str]:
    if not item:
        raise PushParamError("empty push token in pn-prid")
    token, colon, suffix = item.rpartition(":")
    if not colon or (not split_any_suffix and suffix not in SERVICES):
        token, suffix = item, ""
    if not suffix:
        if len(services) != 1:
            raise PushParamError(
                f"pn-prid token needs a :service suffix, pn-param declares {'&'.join(services)}"
            )
        suffix = services[0]
    elif suffix not in SERVICES:
        raise PushParamError(f"unknown push service {suffix!r} in pn-prid")
    elif suffix not in services:
        raise PushParamError(f"pn-prid has a token for {suffix!r}, not declared in pn-param")
    _check_token(token)
    return token, suffix


def _check_token(token: str) -> None:
    if not token:
        raise PushParamError("empty push token in pn-prid")
    if len(token) > _MAX_TOKEN:
        raise PushParamError("push token is too long")
    if not _TOKEN_RE.fullmatch(token):
        raise PushParamError("push token contains invalid characters")


def _parse_legacy(p: Mapping[str, str | None]) -> PushTarget:
    """`pn-type`/`pn-tok`/`app-id` as sent by older Linphone releases."""
    raw_type = _value(p, "pn-type")
    provider = _LEGACY_TYPES.get(raw_type.lower())
    if provider is None:
        raise UnsupportedProviderError(f"unsupported push type {raw_type!r}", raw_type)
    if "pn-tok" not in p:
        raise PushParamError("missing pn-tok")
    tok = _value(p, "pn-tok")
    if provider == "fcm":
        tokens = _match_tokens(tok, ("remote",), split_any_suffix=False)
        return PushTarget("fcm", False, (p.get("app-id") or "").strip(), None, tokens)
    if "app-id" not in p:
        raise PushParamError("missing app-id for pn-type apple")
    app_id = _value(p, "app-id")
    # Linphone appends ".prod" or ".dev" (the sandbox) to the bundle id.
    sandbox = False
    for suffix, is_dev in ((".prod", False), (".dev", True)):
        if app_id.endswith(suffix):
            app_id, sandbox = app_id.removesuffix(suffix), is_dev
            break
    bundle, services = _split_services(app_id)
    if not bundle or not _BUNDLE_RE.fullmatch(bundle):
        raise PushParamError(f"app-id {app_id!r} is not a bundle id")
    tokens = _match_tokens(tok, services, split_any_suffix=True)
    return PushTarget("apns", sandbox, bundle, None, tokens)
