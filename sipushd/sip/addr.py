"""Transport endpoints: where a message came from or goes to."""

from __future__ import annotations

from typing import Final

from sipushd.sip.value import Value


class Endpoint(Value):
    """A transport address; ``flow`` names one stream connection (None: UDP or any)."""

    __slots__ = ("flow", "host", "port", "transport")
    _FIELDS = ("transport", "host", "port", "flow")

    def __init__(self, transport: str, host: str, port: int, flow: int | None = None) -> None:
        self.transport: Final = transport
        self.host: Final = host
        self.port: Final = port
        self.flow: Final = flow

    @property
    def reliable(self) -> bool:
        """True for stream transports (RFC 3261 §18: no retransmissions needed)."""
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"
