"""Stepping a transaction layer's timers by hand, as the runtime's timer loop would."""

from __future__ import annotations

from sipushd.sip.transaction import Action, TimerFired, TransactionLayer


def run_timers(layer: TransactionLayer, until: float) -> list[tuple[float, Action]]:
    """Fire every timer due up to `until`, the way the runtime does: (deadline, action) pairs."""
    fired: list[tuple[float, Action]] = []
    while (deadline := layer.next_deadline()) is not None and deadline <= until:
        fired += [(deadline, action) for action in layer.handle(TimerFired(), deadline)]
    return fired
