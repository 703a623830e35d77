"""What the runtime services are built with, read from a `Config`.

The composition root (`sipushd.app`) builds the services with these at start and
again on SIGHUP: registrar limits, the proxy's routing and push settings (the
upstream's host name looked up), the proxy's own addresses, the digest auth gate
(which reads the users file), the MESSAGE timers and the overload limits. Raw
config values stop here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import socket
import time

import structlog

from sipushd.config import Config
from sipushd.config_schema import OverloadConfig
from sipushd.core.auth import Authenticator, FailureThrottle
from sipushd.core.messages import MessageSettings
from sipushd.core.proxy import DEFAULT_PORTS, LocalAddress, ProxyIdentity, uri_destination
from sipushd.core.registrar import RegistrarSettings
from sipushd.runtime.authgate import AuthGate
from sipushd.runtime.proxy import ProxySettings
from sipushd.runtime.server import ServerCore
from sipushd.sip import Endpoint, SipUri, parse_uri
from sipushd.users import load_users

__all__ = [
    "apply_overload",
    "auth_gate",
    "message_settings",
    "proxy_identity",
    "proxy_settings",
    "registrar_settings",
    "resolved_proxy_settings",
    "supported_providers",
]

log = structlog.get_logger("sipushd.app")


def message_settings(config: Config) -> MessageSettings:
    """MESSAGE store-and-forward timers and limit from `routing`."""
    routing = config.routing
    return MessageSettings(
        accept_timeout=routing.message_accept_timeout,
        delivery_timeout=float(routing.message_delivery_timeout),
        max_per_aor=routing.max_stored_messages_per_aor,
    )


def registrar_settings(config: Config) -> RegistrarSettings:
    """Registrar limits from the config."""
    reg = config.registrar
    return RegistrarSettings(
        min_expires=reg.min_expires,
        max_expires=reg.max_expires,
        default_expires=reg.default_expires,
        max_contacts_per_aor=reg.max_contacts_per_aor,
    )


def supported_providers(config: Config) -> frozenset[str]:
    """RFC 8599 provider labels sipushd can push to with the configured credentials."""
    push = config.push
    labels: set[str] = set()
    if push.apns or push.mock.enabled:
        labels |= {"apns", "apns.dev"}
    if push.fcm or push.mock.enabled:
        labels.add("fcm")
    return frozenset(labels)


def proxy_settings(config: Config) -> ProxySettings:
    """Routing and push settings of the proxy."""
    routing, push = config.routing, config.push
    upstream: SipUri | None = parse_uri(routing.upstream) if routing.upstream else None
    return ProxySettings(
        domains=frozenset(d.lower() for d in config.sip.domains),
        call_timeout=routing.call_timeout,
        push_sent_response=routing.push_sent_response,
        push_mode=push.mode,
        push_delay=push.delay,
        upstream=upstream,
        call_remote_push_interval=push.call_remote_push_interval,
        timer_c=routing.timer_c,
    )


async def resolved_proxy_settings(config: Config) -> ProxySettings:
    """`proxy_settings` with the upstream's host name looked up (RFC 3263 §4.2, A/AAAA)."""
    settings = proxy_settings(config)
    upstream = settings.upstream
    if upstream is None or uri_destination(upstream) is not None:
        return settings  # none, or an IP literal: nothing to look up
    transport = upstream.transport
    port = upstream.port or DEFAULT_PORTS.get(transport, 5060)
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    try:
        found = await asyncio.get_running_loop().getaddrinfo(upstream.host, port, type=kind)
    except OSError as exc:
        log.error("upstream not resolvable: requests for it get 502", upstream=str(upstream),
                  error=str(exc))  # fmt: skip
        return settings
    host = str(found[0][4][0])
    log.info("upstream resolved", upstream=str(upstream), address=f"{host}:{port}")
    return dataclasses.replace(settings, upstream_hop=Endpoint(transport, host, port))


_WILDCARDS = frozenset({"0.0.0.0", "::"})


def proxy_identity(config: Config, listeners: list[Endpoint], secret: bytes) -> ProxyIdentity:
    """Our addresses for Via / Record-Route: public_host, else the bound listener address."""
    sip = config.sip
    fallback = sip.public_host or sip.domains[0]
    addresses = tuple(
        LocalAddress(
            e.transport,
            sip.public_host or (e.host if e.host not in _WILDCARDS else fallback),
            e.port,
        )
        for e in listeners
    ) or (LocalAddress("udp", fallback, 5060),)
    aliases = {a.host.lower() for a in addresses} | {e.host for e in listeners}
    if sip.public_host:
        aliases.add(sip.public_host.lower())
    return ProxyIdentity(addresses, frozenset(aliases - _WILDCARDS), secret)


def auth_gate(config: Config) -> AuthGate | None:
    """Digest authentication for REGISTER (and the proxy), when enabled."""
    auth = config.auth
    if not auth.enabled:
        return None
    realm = auth.realm or config.sip.domains[0]
    assert auth.users_file is not None
    secret = auth.secret.get_secret_value().encode() if auth.secret else secrets.token_bytes(32)
    return AuthGate(
        Authenticator(realm, secret, nonce_ttl=auth.nonce_ttl, algorithms=auth.algorithms),
        load_users(auth.users_file, realm),
        trusted=tuple(auth.trusted_networks),
        throttle=FailureThrottle(auth.max_failures, auth.block_seconds),
        clock=time.time,
    )


def apply_overload(server: ServerCore, overload: OverloadConfig) -> None:
    """Load-shedding limits from `sip.overload` (RFC 3261 §21.5.4: 503 with Retry-After)."""
    server.max_transactions = overload.max_transactions
    server.max_backlog = overload.max_udp_backlog
    server.retry_after = overload.retry_after
