"""State shared by the UDP and stream protocols: callbacks, counters and the flow table.

Callbacks into the layer above never raise into the event loop: an exception is handed to
the loop's exception handler so one bad message cannot close a listening socket.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from typing import TYPE_CHECKING

from sipushd.sip import Endpoint, Request, Response
from sipushd.transport.limits import Counters, TransportLimits

if TYPE_CHECKING:
    from sipushd.transport.stream import StreamFlow

MessageHandler = Callable[[Request | Response, Endpoint], None]
FlowClosedHandler = Callable[[Endpoint], None]
ParseErrorHandler = Callable[[str, Endpoint], None]
FlowKey = tuple[str, str, int]


class TransportContext:
    """Callbacks, limits, counters, and the table of stream flows by id and by peer."""

    __slots__ = (
        "_ids",
        "by_peer",
        "closing",
        "counters",
        "flows",
        "limits",
        "on_flow_closed",
        "on_message",
        "on_parse_error",
    )

    def __init__(
        self,
        on_message: MessageHandler,
        limits: TransportLimits,
        on_flow_closed: FlowClosedHandler | None,
        on_parse_error: ParseErrorHandler | None,
    ) -> None:
        self.on_message = on_message
        self.limits = limits
        self.on_flow_closed = on_flow_closed
        self.on_parse_error = on_parse_error
        self.counters = Counters()
        self.flows: dict[int, StreamFlow] = {}
        self.by_peer: dict[FlowKey, StreamFlow] = {}
        self.closing = False
        self._ids = itertools.count(1)

    def next_flow_id(self) -> int:
        """A new connection id, unique for this manager's lifetime."""
        return next(self._ids)

    def at_capacity(self) -> bool:
        """True when no further stream connection may be opened or accepted."""
        return self.closing or len(self.flows) >= self.limits.max_connections

    def register(self, flow: StreamFlow, key: FlowKey) -> None:
        """Enter a flow in the table by id and by (transport, peer host, peer port)."""
        self.flows[flow.flow_id] = flow
        self.by_peer[key] = flow

    def unregister(self, flow: StreamFlow, key: FlowKey) -> None:
        """Remove a closed flow and tell the layer above (unless shutting down)."""
        if self.flows.pop(flow.flow_id, None) is None:
            return
        if self.by_peer.get(key) is flow:
            del self.by_peer[key]
        callback = self.on_flow_closed
        if callback is not None and not self.closing:
            try:
                callback(flow.endpoint)
            except Exception as exc:
                _report(exc, "on_flow_closed raised")

    def dispatch(self, message: Request | Response, source: Endpoint) -> None:
        """Hand one parsed message to the layer above."""
        self.counters.messages_in += 1
        if self.closing:
            return
        try:
            self.on_message(message, source)
        except Exception as exc:
            _report(exc, "on_message raised")

    def parse_error(self, reason: str, source: Endpoint) -> None:
        """Count and report input that could not be parsed."""
        self.counters.parse_errors += 1
        callback = self.on_parse_error
        if callback is not None and not self.closing:
            try:
                callback(reason, source)
            except Exception as exc:
                _report(exc, "on_parse_error raised")


def _report(exc: Exception, what: str) -> None:
    asyncio.get_running_loop().call_exception_handler(
        {"message": f"sipushd transport: {what}", "exception": exc}
    )
