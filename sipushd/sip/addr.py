"""Transport endpoints: where a message came from or goes to."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A transport address; ``flow`` names one stream connection (None: UDP or any)."""

    transport: str
    host: str
    port: int
    flow: int | None = None

    @property
    def reliable(self) -> bool:
        """True for stream transports (RFC 3261 §18: no retransmissions needed)."""
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"
