"""sipushd.transport: asyncio UDP/TCP/TLS listeners and connections, flows, keep-alive.

Only the names below are public; the runtime wires `TransportManager` to the engine.
"""

from sipushd.transport.limits import TransportError, TransportLimits, TransportStats
from sipushd.transport.manager import TransportManager
from sipushd.transport.routing import family_of, response_destination, stamp_via

__all__ = [
    "TransportError",
    "TransportLimits",
    "TransportManager",
    "TransportStats",
    "family_of",
    "response_destination",
    "stamp_via",
]
