"""Composition root and lifecycle: builds the daemon from a `Config` and runs it.

`Daemon(config)` wires the transport, the transaction engine, the server core and the
services above it; `start()` binds the listeners, `stop(grace)` drains and closes. The
`run` command loads the config file, runs the daemon on uvloop, reports readiness to
systemd, and turns SIGTERM / SIGINT into a graceful stop.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys
from pathlib import Path

import structlog
import uvloop

from sipushd import __version__, notify
from sipushd.config import Config, ConfigError, load_config
from sipushd.logs import configure_logging
from sipushd.runtime.engine import Engine
from sipushd.runtime.server import ServerCore
from sipushd.sip import Endpoint
from sipushd.sip.transaction import TimerConfig, TransactionLayer
from sipushd.transport import TransportLimits, TransportManager

log = structlog.get_logger("sipushd.app")

DEFAULT_CONFIG = Path("/etc/sipushd/sipushd.yaml")


class Daemon:
    """One running sipushd: listeners, engine and services built from one Config."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.engine: Engine | None = None
        self.server: ServerCore | None = None
        self.transport: TransportManager | None = None
        self.listeners: list[Endpoint] = []

    async def start(self) -> None:
        """Build every part and bind the listeners."""
        sip = self.config.sip
        timers = TimerConfig(t1=sip.timers.t1, t2=sip.timers.t2, t4=sip.timers.t4)
        self.engine = engine = Engine(TransactionLayer(timers))
        self.transport = transport = TransportManager(
            engine.on_message,
            limits=TransportLimits(
                idle_timeout=sip.tcp.idle_timeout,
                max_connections=sip.tcp.max_connections,
                max_buffer=sip.tcp.max_buffer,
                max_message_size=sip.max_message_size,
            ),
        )
        self.server = server = ServerCore(engine, user_agent=f"sipushd/{__version__}")
        engine.attach(transport, server)
        tls = self._tls_context()
        for spec in sip.listen:
            context = tls if spec.transport == "tls" else None
            endpoint = await transport.listen(spec.transport, spec.host, spec.port, context)
            self.listeners.append(endpoint)
            log.info(
                "listening", transport=endpoint.transport, host=endpoint.host, port=endpoint.port
            )

    def _tls_context(self) -> ssl.SSLContext | None:
        tls = self.config.sip.tls
        if tls is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        return context

    async def stop(self, grace: float | None = None) -> None:
        """Stop taking new transactions, then close the listeners and connections."""
        if self.engine is not None:
            self.engine.close()
        if self.transport is not None:
            await self.transport.close()


async def serve(config: Config, *, ready: asyncio.Event | None = None) -> None:
    """Run one daemon until SIGTERM / SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    daemon = Daemon(config)
    try:
        await daemon.start()
        notify.ready()
        if ready is not None:
            ready.set()
        log.info("sipushd ready", version=__version__, domains=list(config.sip.domains))
        await stop.wait()
        notify.stopping()
        log.info("stopping", grace=config.shutdown_grace)
    finally:
        await daemon.stop(config.shutdown_grace)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")


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
    try:
        uvloop.run(serve(config))
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    return 0
