"""The config file's schema: one frozen pydantic model per section.

Every model forbids unknown keys. Values are checked here (types, ranges,
syntax of listen specs, CIDRs, URIs) together with the rules that tie fields
of one section together; each rule names the exact key it blames so the
loader can point at its line. Paths are resolved against the directory in
the validation context (`base_dir`); whether files exist is checked by
`sipushd.config`, not here. Fields marked with `FileRef` name files.

The shared building blocks live in `sipushd.config_fields`, the `push` section in
`sipushd.config_push`; both are re-exported here.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from sipushd.config_fields import (
    ConfigPath,
    FileRef,
    Issues,
    Model,
    PublicFile,
    Seconds,
    SecretFile,
    resolve_path,
    value_error,
)
from sipushd.config_push import ApnsApp, FcmApp, MockPushConfig, PushConfig
from sipushd.yamlpos import Problem

__all__ = [
    "DEFAULT_PORTS",
    "AdminConfig",
    "ApnsApp",
    "AuthConfig",
    "Config",
    "ConfigPath",
    "DigestAlgorithm",
    "FcmApp",
    "FileRef",
    "IPNetwork",
    "ListenSpec",
    "LoggingConfig",
    "MockPushConfig",
    "OverloadConfig",
    "PublicFile",
    "PushConfig",
    "RedisConfig",
    "RegistrarConfig",
    "RoutingConfig",
    "Seconds",
    "SecretFile",
    "SipConfig",
    "SqliteConfig",
    "StorageConfig",
    "TcpConfig",
    "TimersConfig",
    "TlsConfig",
    "Transport",
]

Transport = Literal["udp", "tcp", "tls"]
DigestAlgorithm = Literal["SHA-256", "MD5"]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# RFC 3261 §19.1.2: default ports per transport.
DEFAULT_PORTS: dict[str, int] = {"udp": 5060, "tcp": 5060, "tls": 5061}

_HOSTNAME = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
# RFC 3261 §25.1 SIP-URI, loosely: scheme, optional userinfo, host, port, params.
_SIP_URI = re.compile(
    r"(?i)(sips?):(?:[^@;?\s]+@)?(\[[0-9a-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?(;[^?\s]*)?"
)


def _is_host(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(text))
    return True


def _split_host_port(text: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]`, `[v6]:port` -> (host without brackets, port)."""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise value_error(f"bad address {text!r}: expected [IPv6]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise value_error(f"bad IPv6 address {host!r}") from None
        port_text = rest[1:] if rest else None
    else:
        if text.count(":") > 1:
            raise value_error(
                f"bad address {text!r}: write IPv6 addresses in brackets, e.g. [::1]:5060"
            )
        host, _, port_text = text.partition(":")
        port_text = port_text or None
        if not _is_host(host):
            raise value_error(f"bad host {host!r}")
    if port_text is None:
        return host, None
    if not port_text.isdigit() or int(port_text) > 65535:
        raise value_error(f"bad port {port_text!r}: expected 0-65535")
    return host, int(port_text)


# --- sip ----------------------------------------------------------------------------------


class ListenSpec(Model):
    """A socket to listen on: `udp:0.0.0.0:5060`, `tls:[::]:5061`, `tcp:host` (port 5060)."""

    transport: Transport
    host: str
    port: int = Field(ge=0, le=65535)

    @property
    def is_ipv6(self) -> bool:
        """True when `host` is an IPv6 literal."""
        return ":" in self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        return f"{self.transport}:{host}:{self.port}"


def _transport_address(
    value: str, what: str, host_kind: str = "HOST"
) -> tuple[str, str, int | None]:
    """`udp|tcp|tls:HOST[:PORT]` split into transport, host and port (None if absent)."""
    transport, sep, rest = value.partition(":")
    transport = transport.lower()
    if not sep or transport not in DEFAULT_PORTS:
        raise value_error(f"bad {what} {value!r}: expected udp|tcp|tls:{host_kind}:PORT")
    host, port = _split_host_port(rest)
    return transport, host, port


def _parse_listen(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    transport, host, port = _transport_address(value, "listen spec")
    return {
        "transport": transport,
        "host": host,
        "port": DEFAULT_PORTS[transport] if port is None else port,
    }


def _check_domain(value: Any) -> Any:
    if isinstance(value, str):
        if not _is_host(value):
            raise value_error(f"bad domain {value!r}: expected a host name such as example.org")
        return value.lower().rstrip(".")
    return value


def _check_host(value: Any) -> Any:
    if isinstance(value, str) and not _is_host(value):
        raise value_error(f"bad host {value!r}: expected a host name or IP address")
    return value


class TlsConfig(Model):
    """Certificate and key for `tls:` listeners (RFC 3261 §26.2)."""

    cert_file: PublicFile
    key_file: SecretFile
    ca_file: PublicFile | None = None


class TimersConfig(Model):
    """RFC 3261 §17.1.1.1 timer values in seconds."""

    t1: Seconds = 0.5
    t2: Seconds = 4.0
    t4: Seconds = 5.0

    @model_validator(mode="after")
    def _order(self) -> Self:
        issues = Issues()
        if self.t2 < self.t1:
            issues.add(("t2",), f"must be >= t1 ({self.t1})", self.t2)
        issues.raise_any("TimersConfig")
        return self


class TcpConfig(Model):
    """Limits for TCP and TLS connections."""

    idle_timeout: Seconds = 600.0
    max_connections: int = Field(default=10000, ge=1)
    max_buffer: int = Field(default=262144, ge=1024)
    keepalive: bool = True  # RFC 5626 §4.4.1 CRLF keep-alives


class OverloadConfig(Model):
    """Load shedding: new INVITE / MESSAGE get 503 with Retry-After (RFC 3261 §21.5.4)."""

    max_transactions: int = Field(default=50_000, ge=100)  # live SIP transactions
    # Bytes of UDP datagrams received but not yet read (kernel receive queues); 0: no limit.
    max_udp_backlog: int = Field(default=2 * 1024 * 1024, ge=0)
    retry_after: int = Field(default=10, ge=1, le=3600)  # seconds, in the 503


class SipConfig(Model):
    """What this registrar serves and where it listens."""

    domains: list[Annotated[str, BeforeValidator(_check_domain)]] = Field(min_length=1)
    listen: list[Annotated[ListenSpec, BeforeValidator(_parse_listen)]] = Field(
        default_factory=lambda: [
            ListenSpec(transport="udp", host="0.0.0.0", port=5060),
            ListenSpec(transport="tcp", host="0.0.0.0", port=5060),
        ],
        min_length=1,
    )
    tls: TlsConfig | None = None
    public_host: Annotated[str, BeforeValidator(_check_host)] | None = None
    max_message_size: int = Field(default=65536, ge=1500, le=16 * 1024 * 1024)
    timers: TimersConfig = TimersConfig()
    tcp: TcpConfig = TcpConfig()
    overload: OverloadConfig = OverloadConfig()

    @model_validator(mode="after")
    def _rules(self) -> Self:
        issues = Issues()
        seen: dict[tuple[str, str, int], int] = {}
        for index, spec in enumerate(self.listen):
            key = (spec.transport, spec.host, spec.port)
            if key in seen and spec.port != 0:
                issues.add(("listen", index), f"same listener as listen[{seen[key]}]", str(spec))
            seen.setdefault(key, index)
            if spec.transport == "tls" and self.tls is None:
                issues.add(("listen", index), "a tls listener needs sip.tls (cert_file, key_file)")
        for index, domain in enumerate(self.domains):
            if self.domains.index(domain) != index:
                issues.add(("domains", index), f"duplicate domain {domain!r}", domain)
        if self.tcp.max_buffer < self.max_message_size:
            issues.add(
                ("tcp", "max_buffer"),
                f"must be >= sip.max_message_size ({self.max_message_size})",
                self.tcp.max_buffer,
            )
        issues.raise_any("SipConfig")
        return self


# --- auth ---------------------------------------------------------------------------------


def _parse_network(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        if "host bits set" in str(exc):
            fixed = ipaddress.ip_network(value, strict=False)
            raise value_error(f"{value!r} has host bits set; did you mean {fixed}?") from None
        raise value_error(f"bad network {value!r}: expected a CIDR such as 10.0.0.0/8") from None


def _secret(min_length: int) -> BeforeValidator:
    def check(value: Any) -> Any:
        if isinstance(value, str) and len(value) < min_length:
            raise value_error(f"too short: use at least {min_length} characters")
        return value

    return BeforeValidator(check)


def _default_algorithms() -> list[DigestAlgorithm]:
    return ["SHA-256", "MD5"]


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


class AuthConfig(Model):
    """Digest authentication of REGISTER and requests from local users (RFC 3261 §22)."""

    enabled: bool = False
    # null: the domain of the AOR being registered or called
    realm: str | None = Field(default=None, min_length=1)
    users_file: SecretFile | None = None
    trusted_networks: list[Annotated[IPNetwork, BeforeValidator(_parse_network)]] = []
    nonce_ttl: int = Field(default=300, ge=10)
    secret: Annotated[SecretStr, _secret(16)] | None = None  # null: random per start
    max_failures: int = Field(default=10, ge=1)
    block_seconds: int = Field(default=60, ge=0)
    # RFC 8760: SHA-256 first, MD5 for older phones.
    algorithms: list[Annotated[DigestAlgorithm, BeforeValidator(_upper)]] = Field(
        default_factory=_default_algorithms, min_length=1
    )

    @model_validator(mode="after")
    def _rules(self) -> Self:
        issues = Issues()
        if self.enabled and self.users_file is None:
            issues.add(("users_file",), "required when auth.enabled is true")
        if len(set(self.algorithms)) != len(self.algorithms):
            issues.add(("algorithms",), "lists an algorithm twice", self.algorithms)
        issues.raise_any("AuthConfig")
        return self


# --- registrar and routing ----------------------------------------------------------------


class RegistrarConfig(Model):
    """REGISTER handling limits (RFC 3261 §10.3)."""

    min_expires: int = Field(default=60, ge=1)
    max_expires: int = Field(default=604800, ge=1)
    default_expires: int = Field(default=3600, ge=1)
    max_contacts_per_aor: int = Field(default=12, ge=1)

    @model_validator(mode="after")
    def _order(self) -> Self:
        issues = Issues()
        if not self.min_expires <= self.default_expires <= self.max_expires:
            issues.add(
                ("default_expires",),
                "must satisfy min_expires <= default_expires <= max_expires "
                f"({self.min_expires} <= {self.default_expires} <= {self.max_expires})",
                self.default_expires,
            )
        issues.raise_any("RegistrarConfig")
        return self


def _check_sip_uri(value: Any) -> Any:
    if isinstance(value, str):
        match = _SIP_URI.fullmatch(value)
        if match is None or (match.group(3) and int(match.group(3)) > 65535):
            raise value_error(f"bad SIP URI {value!r}: expected e.g. sip:pbx.example.org:5060")
    return value


class RoutingConfig(Model):
    """Where requests go and how long they may wait for a sleeping phone."""

    call_timeout: Seconds = 90.0
    message_accept_timeout: Seconds = 5.0
    message_delivery_timeout: int = Field(default=604800, ge=1)
    push_sent_response: bool = True  # RFC 8599 §5.6.2: 110 Push sent
    upstream: Annotated[str, BeforeValidator(_check_sip_uri)] | None = None
    max_stored_messages_per_aor: int = Field(default=100, ge=0)
    # RFC 3261 §16.6 step 11: a proxied INVITE's branch gets Timer C, "larger than 3 minutes",
    # restarted by each provisional; when it fires the branch is cancelled.
    timer_c: float = Field(default=181.0, gt=180.0)


# --- storage ------------------------------------------------------------------------------


def _sqlite_path(value: Any, info: ValidationInfo) -> Any:
    if value == ":memory:":
        return Path(value)
    return resolve_path(Path(value), info) if isinstance(value, str | Path) else value


class SqliteConfig(Model):
    """The embedded store: one file in WAL mode (or `:memory:` for tests)."""

    path: Annotated[Path, BeforeValidator(_sqlite_path)] = Path("/var/lib/sipushd/sipushd.db")


def _check_redis_url(value: Any) -> Any:
    if isinstance(value, str):
        parts = urlsplit(value)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.netloc or parts.path):
            raise value_error(f"bad redis URL {value!r}: expected redis://HOST:PORT/DB")
    return value


def _parse_advertise(value: Any) -> Any:
    """`udp|tcp|tls:IP:PORT`, an address the other nodes can send to without DNS."""
    if not isinstance(value, str):
        return value
    transport, host, port = _transport_address(value, "advertise address", "IP")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise value_error(
            f"bad advertise address {value!r}: the host must be an IP address"
        ) from None
    if address.is_unspecified or port == 0:
        raise value_error(f"bad advertise address {value!r}: other nodes cannot send to it")
    return {"transport": transport, "host": host, "port": port or DEFAULT_PORTS[transport]}


class RedisConfig(Model):
    """A shared store for several sipushd nodes."""

    url: Annotated[str, BeforeValidator(_check_redis_url)] = "redis://127.0.0.1:6379/0"
    key_prefix: str = "sipushd:"
    # Where the other nodes reach this one (its Path entry, RFC 3327); null: the first
    # sip.listen address that is not a wildcard.
    advertise: Annotated[ListenSpec, BeforeValidator(_parse_advertise)] | None = None


class StorageConfig(Model):
    """Where bindings and stored messages live."""

    backend: Literal["sqlite", "redis"] = "sqlite"
    sqlite: SqliteConfig = SqliteConfig()
    redis: RedisConfig = RedisConfig()


# --- admin, logging, root -----------------------------------------------------------------


def _check_admin_listen(value: Any) -> Any:
    if isinstance(value, str):
        _, port = _split_host_port(value)
        if port is None:
            raise value_error(f"bad address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9060")
    return value


class AdminConfig(Model):
    """The admin HTTP server: /metrics, /health and the JSON API."""

    listen: Annotated[str, BeforeValidator(_check_admin_listen)] = "127.0.0.1:9060"
    token: Annotated[SecretStr, _secret(16)] | None = None  # bearer token for the JSON API

    @property
    def host(self) -> str:
        """Host part of `listen` (IPv6 without brackets)."""
        return _split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        """Port part of `listen`."""
        return _split_host_port(self.listen)[1] or 0


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


class LoggingConfig(Model):
    """Log format and level."""

    format: Literal["json", "console"] = "json"
    level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"], BeforeValidator(_lower)
    ] = "info"


class Config(Model):
    """The whole config file."""

    sip: SipConfig
    auth: AuthConfig = AuthConfig()
    registrar: RegistrarConfig = RegistrarConfig()
    routing: RoutingConfig = RoutingConfig()
    storage: StorageConfig = StorageConfig()
    push: PushConfig = PushConfig()
    admin: AdminConfig = AdminConfig()
    logging: LoggingConfig = LoggingConfig()
    shutdown_grace: float = Field(default=10.0, ge=0)

    _source_path: Path | None = PrivateAttr(default=None)
    _warnings: tuple[Problem, ...] = PrivateAttr(default=())

    @property
    def source_path(self) -> Path | None:
        """The file this config was loaded from (None if built in code)."""
        return self._source_path

    @property
    def warnings(self) -> tuple[Problem, ...]:
        """Things that work but deserve the operator's attention."""
        return self._warnings

    @model_validator(mode="after")
    def _across_sections(self) -> Self:
        issues = Issues()
        # RFC 3261 §17.1.2.2: the sender gives up after Timer F = 64*T1.
        timer_f = 64 * self.sip.timers.t1
        if self.routing.message_accept_timeout >= timer_f:
            issues.add(
                ("routing", "message_accept_timeout"),
                f"must be below the sender's Timer F (64 * sip.timers.t1 = {timer_f:g} s)",
                self.routing.message_accept_timeout,
            )
        advertise = self.storage.redis.advertise
        if advertise is not None and advertise.transport not in {
            spec.transport for spec in self.sip.listen
        }:
            issues.add(
                ("storage", "redis", "advertise"),
                f"no sip.listen entry for {advertise.transport}: other nodes could not reach it",
                str(advertise),
            )
        issues.raise_any("Config")
        return self
