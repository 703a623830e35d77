"""Transport limits, counters and the transport error: the knobs and numbers of the I/O edge."""

from __future__ import annotations

from dataclasses import dataclass, field


class TransportError(Exception):
    """A message could not be handed to the network (no listener, limit reached, flow closed)."""


@dataclass(frozen=True, slots=True)
class TransportLimits:
    """Resource limits for listeners and connections (seconds and bytes)."""

    idle_timeout: float = 600.0
    max_connections: int = 10000
    max_buffer: int = 262144
    max_message_size: int = 65536
    connect_timeout: float = 5.0

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("idle_timeout and connect_timeout must be positive")
        if self.max_connections < 0 or self.max_buffer <= 0 or self.max_message_size <= 0:
            raise ValueError("max_connections, max_buffer and max_message_size must be positive")


@dataclass(frozen=True, slots=True)
class TransportStats:
    """A snapshot of the transport counters; `connections` maps "tcp"/"tls" to open flows."""

    connections: dict[str, int] = field(default_factory=dict)
    messages_in: int = 0
    messages_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    parse_errors: int = 0
    keepalives: int = 0
    rejected_connections: int = 0
    idle_closed: int = 0
    overflow_closed: int = 0
    connect_failures: int = 0
    send_errors: int = 0


class Counters:
    """Mutable counters shared by the protocols; `stats()` snapshots them."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_failures",
        "idle_closed",
        "keepalives",
        "messages_in",
        "messages_out",
        "overflow_closed",
        "parse_errors",
        "rejected_connections",
        "send_errors",
    )

    def __init__(self) -> None:
        self.messages_in = 0
        self.messages_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.parse_errors = 0
        self.keepalives = 0
        self.rejected_connections = 0
        self.idle_closed = 0
        self.overflow_closed = 0
        self.connect_failures = 0
        self.send_errors = 0

    def snapshot(self, connections: dict[str, int]) -> TransportStats:
        """Freeze the current values together with the per-transport connection counts."""
        return TransportStats(
            connections=connections,
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            parse_errors=self.parse_errors,
            keepalives=self.keepalives,
            rejected_connections=self.rejected_connections,
            idle_closed=self.idle_closed,
            overflow_closed=self.overflow_closed,
            connect_failures=self.connect_failures,
            send_errors=self.send_errors,
        )
