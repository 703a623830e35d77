"""Composition root and lifecycle: builds the daemon from a `Config` and runs it.

`Daemon(config)` wires the transport, the transaction engine, the server core and the
services above it; `start()` binds the listeners, `stop(grace)` drains and closes. The
`run` command loads the config file, runs the daemon on uvloop, reports readiness (and
watchdog pings) to systemd, reloads the config on SIGHUP and turns SIGTERM / SIGINT into
a graceful stop.

What each service is built with comes from `sipushd.app_settings`; the stores are
opened by `sipushd.app_stores`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import secrets
import signal
import ssl
import sys
import time
from pathlib import Path

import structlog
import uvloop

from sipushd import __version__, metrics, native, notify
from sipushd.admin import AdminServer
from sipushd.app_settings import (
    apply_overload,
    auth_gate,
    message_settings,
    proxy_identity,
    proxy_settings,
    registrar_settings,
    resolved_proxy_settings,
    supported_providers,
)
from sipushd.app_stores import open_message_store, open_store
from sipushd.config import Config, ConfigError, load_config
from sipushd.core.cluster import ClusterPaths
from sipushd.core.payload import PayloadError, PushRequest, apns_push_type
from sipushd.core.proxy import LocalAddress, is_in_dialog
from sipushd.core.registrar import Registrar
from sipushd.logs import configure_logging, set_level
from sipushd.push.base import PushResult
from sipushd.push.dispatcher import Dispatcher
from sipushd.pushtest import build_providers, dispatcher_settings
from sipushd.runtime.authgate import AuthGate
from sipushd.runtime.cluster import advertised_address
from sipushd.runtime.engine import Engine
from sipushd.runtime.messages import MessageService
from sipushd.runtime.proxy import ProxyCore
from sipushd.runtime.refresh import RefreshPusher
from sipushd.runtime.registrar import RegistrarService
from sipushd.runtime.server import RequestHandler, ServerCore
from sipushd.sip import Endpoint, Request, SipParseError
from sipushd.sip.transaction import TimerConfig, TransactionKey, TransactionLayer
from sipushd.store.base import BindingStore
from sipushd.store.messages import MessageStore
from sipushd.store.redis_bindings import RedisBindingStore
from sipushd.transport import TransportLimits, TransportManager

__all__ = [
    "DEFAULT_CONFIG",
    "Daemon",
    "add_arguments",
    "auth_gate",
    "message_settings",
    "open_message_store",
    "open_store",
    "proxy_identity",
    "proxy_settings",
    "registrar_settings",
    "reload_config_file",
    "resolved_proxy_settings",
    "run",
    "serve",
    "supported_providers",
    "tune_gc",
]

log = structlog.get_logger("sipushd.app")

DEFAULT_CONFIG = Path("/etc/sipushd/sipushd.yaml")


class Daemon:
    """One running sipushd: listeners, engine and services built from one Config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.server: ServerCore | None = None
        self.transport: TransportManager | None = None
        self.store: BindingStore | None = None
        self.registrar: RegistrarService | None = None
        self.dispatcher: Dispatcher | None = None
        self.proxy: ProxyCore | None = None
        self.message_store: MessageStore | None = None
        self.messages: MessageService | None = None
        self.refresher: RefreshPusher | None = None
        self.listeners: list[Endpoint] = []
        self.admin: AdminServer | None = None
        self.stopping = False
        self._housekeeping: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._retired: set[asyncio.Task[None]] = set()
        self._tls: ssl.SSLContext | None = None

    async def start(self) -> None:
        """Build every part and bind the listeners."""
        sip = self.config.sip
        timers = TimerConfig(t1=sip.timers.t1, t2=sip.timers.t2, t4=sip.timers.t4)
        self.engine = engine = Engine(TransactionLayer(timers))
        self.transport = transport = TransportManager(
            engine.on_message,
            on_parse_error=_count_parse_error,
            limits=TransportLimits(
                idle_timeout=sip.tcp.idle_timeout,
                max_connections=sip.tcp.max_connections,
                max_buffer=sip.tcp.max_buffer,
                max_message_size=sip.max_message_size,
            ),
        )
        self.server = server = ServerCore(engine, user_agent=f"sipushd/{__version__}")
        apply_overload(server, sip.overload)
        engine.attach(transport, server)
        self.store = store = await open_store(self.config)
        self.dispatcher = Dispatcher(
            build_providers(self.config.push),
            dispatcher_settings(self.config.push),
            on_dead_token=self._dead_token,
            on_result=_count_push,
        )
        await self.dispatcher.start()
        # The current dispatcher: SIGHUP replaces it.
        server.overload_checks.append(lambda: self.dispatcher is not None and self.dispatcher.full)
        server.backlog = transport.udp_backlog
        gate = auth_gate(self.config)
        self.registrar = RegistrarService(
            server,
            store,
            Registrar(registrar_settings(self.config)),
            domains=sip.domains,
            supported_providers=supported_providers(self.config),
            auth=gate,
            clock=time.time,
        )
        server.handlers["REGISTER"] = self.registrar.handle
        secret = self._token_secret()
        self.proxy = proxy = ProxyCore(
            server,
            store,
            transport,
            self.dispatcher,
            proxy_identity(self.config, [], secret),
            await resolved_proxy_settings(self.config),
            auth=gate,
            clock=time.time,
        )
        proxy.attach()
        self.registrar.on_registered.append(proxy.on_registered)
        self.message_store = await open_message_store(self.config)
        self.messages = messages = MessageService(
            server,
            store,
            self.message_store,
            settings=message_settings(self.config),
            domains=sip.domains,
            identity=None,
            flow_alive=transport.flow_alive,
            push=self._push,
            clock=time.time,
        )
        server.handlers["MESSAGE"] = messages.handle
        self.registrar.on_registered.append(messages.on_registered)
        if isinstance(store, RedisBindingStore):
            # A REGISTER that reached another node may wake a call held here; its stored
            # MESSAGEs are that node's to deliver.
            await store.subscribe(proxy.on_registered)
        messages.start()
        self._housekeeping = asyncio.create_task(self._purge_expired())
        # RFC 8599 §5.5: background pushes before expiry for phones without +sip.pnsreg.
        self.refresher = RefreshPusher(store, self.dispatcher)
        self._refresh = asyncio.create_task(self.refresher.run())
        self._tls = tls = self._tls_context()
        for spec in sip.listen:
            context = tls if spec.transport == "tls" else None
            endpoint = await transport.listen(spec.transport, spec.host, spec.port, context)
            self.listeners.append(endpoint)
            log.info(
                "listening", transport=endpoint.transport, host=endpoint.host, port=endpoint.port
            )
        # Via, Record-Route and loop detection use the addresses actually bound.
        proxy.identity = identity = proxy_identity(self.config, self.listeners, secret)
        messages.identity = identity
        if isinstance(store, RedisBindingStore):
            self._share_paths(store, proxy)
        domains = frozenset(d.lower() for d in sip.domains)
        server.is_for_us = lambda uri: uri.host.lower().strip("[]") in identity.aliases | domains
        self.admin = AdminServer(self)
        await self.admin.start(self.config.admin.host, self.config.admin.port)

    def _share_paths(self, store: RedisBindingStore, proxy: ProxyCore) -> None:
        """Bindings stored here lead other nodes to this one (first Path entry, RFC 3327)."""
        spec = self.config.storage.redis.advertise
        configured = LocalAddress(spec.transport, spec.host, spec.port) if spec else None
        address = advertised_address(configured, self.listeners)
        if address is None:
            log.warning("no address for other nodes: set storage.redis.advertise")
            return
        # A key of this process only: flow ids in older entries name dead connections.
        store.paths = proxy.paths = ClusterPaths(address, secrets.token_bytes(32))
        where = {"transport": address.transport, "host": address.host, "port": address.port}
        log.info("address for other nodes", **where)

    def _push(self, request: PushRequest) -> object:
        """Submit a push to the current dispatcher (a reload may replace it)."""
        assert self.dispatcher is not None
        return self.dispatcher.submit(request)

    def _token_secret(self) -> bytes:
        """The key that signs Record-Route flow tokens."""
        auth = self.config.auth
        if auth.secret is not None:
            return b"flow-token:" + auth.secret.get_secret_value().encode()
        return secrets.token_bytes(32)

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.sip.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        return context

    async def _dead_token(self, request: PushRequest, result: PushResult) -> None:
        """The provider says the token is dead: stop pushing to it (APNs 410, FCM 404)."""
        assert self.store is not None
        updated = await self.store.remove_token(request.token)
        metrics.DEAD_TOKENS_REMOVED.labels(provider=request.provider).inc()
        log.info(
            "dead push token removed",
            provider=request.provider,
            token=request.token,
            reason=result.reason,
            bindings=[b.aor for b in updated],
        )

    async def _purge_expired(self, interval: float = 60.0) -> None:
        assert self.store is not None
        while True:
            await asyncio.sleep(interval)
            purged = await self.store.purge_expired(time.time())
            if purged:
                log.info("expired bindings purged", count=purged)

    async def reload(self, config: Config) -> None:
        """Apply `config` without dropping bindings, flows or held requests (SIGHUP).

        Users, push credentials, the TLS certificate files' contents, registrar limits,
        routing timers and the log level change; listeners, storage and the admin
        address need a restart and are kept.
        Everything that can fail runs before anything changes.
        """
        config = _keep_restart_only(self.config, config)
        gate = self._next_gate(config)
        renewed = self._tls_context()  # the certificate files may have been renewed
        dispatcher = Dispatcher(
            build_providers(config.push),
            dispatcher_settings(config.push),
            on_dead_token=self._dead_token,
            on_result=_count_push,
        )
        try:
            await dispatcher.start()
        except BaseException:
            await dispatcher.stop(0)
            raise
        set_level(config.logging.level)
        if self._tls is not None and renewed is not None and (tls := config.sip.tls):
            # The listeners hold this context: new handshakes use the renewed chain.
            try:
                self._tls.load_cert_chain(str(tls.cert_file), str(tls.key_file))
            except (ssl.SSLError, OSError) as exc:
                log.error("TLS certificate not renewed", error=str(exc))
        routing = await resolved_proxy_settings(config)
        old, self.dispatcher, self.config = self.dispatcher, dispatcher, config
        if self.registrar is not None:
            self.registrar.auth = gate
            self.registrar.registrar = Registrar(registrar_settings(config))
            self.registrar.supported_providers = supported_providers(config)
        if self.proxy is not None:
            self.proxy.auth = gate
            self.proxy.pushes = dispatcher
            self.proxy.settings = routing
        if self.refresher is not None:
            self.refresher.pushes = dispatcher
        if self.messages is not None:
            self.messages.settings = message_settings(config)
        if self.server is not None:
            apply_overload(self.server, config.sip.overload)
        if old is not None:  # pushes in flight finish on the old providers
            task = asyncio.create_task(old.stop(config.shutdown_grace))
            self._retired.add(task)
            task.add_done_callback(self._retired.discard)

    def _next_gate(self, config: Config) -> AuthGate | None:
        """The auth gate for `config`; nonces already issued stay valid when they can."""
        gate = auth_gate(config)
        current = self.registrar.auth if self.registrar is not None else None
        if gate is None or current is None:
            return gate
        old, new = self.config.auth, config.auth
        same_keys = (old.secret, old.nonce_ttl, old.algorithms) == (
            new.secret,
            new.nonce_ttl,
            new.algorithms,
        )
        if same_keys and gate.authenticator.realm == current.authenticator.realm:
            gate.authenticator = current.authenticator
        if (old.max_failures, old.block_seconds) == (new.max_failures, new.block_seconds):
            gate.throttle = current.throttle
        return gate

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new transactions, let held ones finish for `grace`, then close all."""
        self.stopping = True
        if self.engine is not None:
            if self.server is not None:
                _refuse_new_work(self.server)
            await self._drain(self.config.shutdown_grace if grace is None else grace)
            self.engine.close()  # from here on every new request is dropped
        for task in (self._housekeeping, self._refresh):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self.registrar is not None:
            await self.registrar.close()
        if self.proxy is not None:
            await self.proxy.close()
        if self.messages is not None:
            await self.messages.close()
        if self.admin is not None:
            await self.admin.close()
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self._retired:
            await asyncio.gather(*self._retired, return_exceptions=True)
        if self.transport is not None:
            await self.transport.close()
        if self.store is not None:
            await self.store.close()
        if self.message_store is not None:
            await self.message_store.close()

    async def _drain(self, grace: float) -> None:
        """Let held calls finish for at most `grace` seconds (through the proxy's drain())."""
        drain = getattr(self.proxy, "drain", None)
        if callable(drain):
            await drain(grace)
            return
        proxy = self.proxy
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                while proxy is not None and proxy.held_calls:  # noqa: ASYNC110 (no event to wait on)
                    await asyncio.sleep(0.05)
        if proxy is not None and proxy.held_calls:
            log.warning("held calls dropped at shutdown", count=proxy.held_calls)


def _in_dialog(request: Request) -> bool:
    try:
        return is_in_dialog(request)
    except SipParseError:
        return False


def _refuse_new_work(server: ServerCore) -> None:
    """Draining: new calls and messages get 503 with Retry-After (RFC 3261 §21.5.4).

    REGISTER (a woken phone), CANCEL, ACK and in-dialog requests still go through, so
    held calls can end.
    """

    def refusing(handler: RequestHandler) -> RequestHandler:
        def handle(request: Request, source: Endpoint, key: TransactionKey) -> None:
            if request.method == "REGISTER" or _in_dialog(request):
                handler(request, source, key)
            else:
                server.reply(key, request, 503, "Shutting Down", [("Retry-After", "5")])

        return handle

    server.handlers = {method: refusing(h) for method, h in server.handlers.items()}
    if server.forward_handler is not None:
        server.forward_handler = refusing(server.forward_handler)


def _keep_restart_only(current: Config, new: Config) -> Config:
    """`new` with the sections that need a restart (sip, storage, admin.listen) kept.

    `sip.overload` is the exception in `sip`: the new limits apply at once.
    """
    kept = []
    sip = current.sip.model_copy(update={"overload": new.sip.overload})
    if new.sip != sip:
        kept.append("sip")
    if new.storage != current.storage:
        kept.append("storage")
    if new.admin.listen != current.admin.listen:
        kept.append("admin.listen")
    if new.logging.format != current.logging.format:
        kept.append("logging.format")
    for key in kept:
        log.warning("config change needs a restart: kept the running value", key=key)
    admin = new.admin.model_copy(update={"listen": current.admin.listen})
    logging = new.logging.model_copy(update={"format": current.logging.format})
    update = {"sip": sip, "storage": current.storage, "admin": admin, "logging": logging}
    return new.model_copy(update=update)


def _count_parse_error(reason: str, source: Endpoint) -> None:
    metrics.PARSE_ERRORS.labels(transport=source.transport).inc()
    log.debug("malformed message", peer=str(source), reason=reason)


def _count_push(request: PushRequest, result: PushResult) -> None:
    try:
        push_type = apns_push_type(request).value if request.provider == "apns" else "data"
    except PayloadError:
        push_type = "invalid"
    metrics.PUSHES.labels(
        provider=request.provider, type=push_type, result=result.outcome.value
    ).inc()
    if result.status is not None:
        metrics.PUSH_LATENCY.labels(provider=request.provider).observe(result.latency)


_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run one daemon until SIGTERM / SIGINT; SIGHUP reloads the config file."""
    loop = asyncio.get_running_loop()
    signals: asyncio.Queue[int] = asyncio.Queue()
    for signum in _SIGNALS:  # handlers only queue the signal; this loop acts on it
        loop.add_signal_handler(signum, signals.put_nowait, signum)
    daemon = Daemon(config)
    watchdog: asyncio.Task[None] | None = None
    try:
        await daemon.start()
        notify.ready()
        if (interval := notify.watchdog_interval()) is not None:
            watchdog = asyncio.create_task(_watchdog(interval))
        if ready is not None:
            ready.set()
        log.info(
            "sipushd ready",
            version=__version__,
            domains=list(config.sip.domains),
            compiled=bool(native.compiled_modules()),
        )
        if stale := native.stale_modules():
            log.warning("compiled modules older than their sources: run `make venv`", stale=stale)
        while await signals.get() == signal.SIGHUP:
            await reload_config_file(daemon, config.source_path)
        notify.stopping()
        log.info("stopping", grace=daemon.config.shutdown_grace)
    finally:
        await daemon.stop(daemon.config.shutdown_grace)
        if watchdog is not None:
            watchdog.cancel()
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
    log.info("stopped")


async def reload_config_file(daemon: Daemon, path: Path | None) -> None:
    """SIGHUP: reload the config file; a broken one leaves the running config in place."""
    if path is None:
        log.warning("reload ignored: the config was not loaded from a file")
        return
    notify.reloading()
    log.info("reloading", config=str(path))
    try:
        config = load_config(path)
        await daemon.reload(config)
    except ConfigError as exc:
        problems = [str(problem) for problem in exc.problems]
        log.error("reload failed: old config kept", config=str(path), problems=problems)
    except Exception as exc:  # users file, push credentials: keep serving with the old ones
        log.error("reload failed: old config kept", config=str(path), error=str(exc))
    else:
        for warning in config.warnings:
            log.warning("config warning", problem=str(warning))
        log.info("config reloaded", config=str(path))
    notify.ready()


async def _watchdog(interval: float) -> None:
    """systemd WatchdogSec=: ping while the event loop runs."""
    while True:
        notify.watchdog()
        await asyncio.sleep(interval)


def tune_gc(full_every: int = 1000) -> None:
    """Make full garbage collections rare: at most one per `full_every` middle ones.

    Under load the heap holds every binding and every UDP server transaction kept for
    Timer J (64*T1, RFC 3261 §17.2.2), tens of objects per REGISTER, and CPython's default
    (a full pass every 10 middle ones once the heap grew by a quarter) walks all of it
    again and again: a 30,000-REGISTER sipp run spent about a third of its CPU there.
    Refcounting frees sipushd's data; the few reference cycles still get collected.
    """
    gc.freeze()  # modules and config, loaded once, are never garbage
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, full_every)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `sipushd run`."""
    parser.add_argument(
        "--config", type=Path, default=DEFAULT_CONFIG, help=f"config file [{DEFAULT_CONFIG}]"
    )


def run(args: argparse.Namespace) -> int:
    """`sipushd run`: serve until SIGTERM / SIGINT; exit 1 on a bad config file."""
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"sipushd: {args.config}: invalid config:\n{exc}", file=sys.stderr)
        return 1
    configure_logging(config.logging.format, config.logging.level)
    for warning in config.warnings:
        log.warning("config warning", problem=str(warning))
    tune_gc()
    try:
        uvloop.run(serve(config))
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    return 0
