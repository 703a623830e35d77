"""The state of one held INVITE (RFC 8599 §5.6.2): its pushed devices and their wake-up story.

Plain mutable records owned by `CallWaker` (runtime/wakeup.py); times are event-loop
seconds. A device is one `+sip.instance` (else one binding key): it is pushed once,
and the held INVITE is forked to it once, whatever number of REGISTERs it sends.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sipushd.core.binding import Binding
from sipushd.core.payload import PushKind, PushRequest, PushService
from sipushd.runtime.forking import Branch, ForwardContext


def device_id(binding: Binding) -> str:
    """One device: its instance id, else its binding key."""
    return binding.instance or binding.key


@dataclass(eq=False)
class Wakeup:
    """One device pushed for a held INVITE, and how its wake-up went."""

    binding: Binding
    push: PushRequest
    pushed_at: float
    # scheduled -> pushing -> pushed -> registered; or failed / answered
    state: str = "pushing"
    registered_at: float | None = None
    forwarded_at: float | None = None
    answered: int | None = None
    repeats: int = 0  # ringing alerts sent again (push.call_remote_push_interval)

    @property
    def waiting(self) -> bool:
        """True while the device may still register."""
        return self.state in ("scheduled", "pushing", "pushed")

    @property
    def alert_call(self) -> bool:
        """True for an iOS device without a VoIP token: its calls ring by alert push.

        Only those pushes are repeated: every VoIP push must be reported to CallKit
        as a new call (PUSH-PROTOCOLS.md), and FCM data messages wake an app that rings
        by itself.
        """
        push = self.push
        return (
            push.provider == "apns"
            and push.kind is PushKind.CALL
            and push.service is PushService.REMOTE
        )


@dataclass(eq=False)
class HeldCall:
    """An INVITE to a local AOR whose devices may be woken by a push."""

    context: ForwardContext
    aor: str
    started: float
    wakeups: dict[str, Wakeup] = field(default_factory=dict)
    forked: dict[str, Branch] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    repeat: asyncio.TimerHandle | None = None
    cancelled: bool = False
    held: bool = False

    def waiting(self) -> bool:
        """True while a pushed device may still register (keeps the call open)."""
        return any(w.waiting for w in self.wakeups.values())

    def stop_timers(self) -> None:
        """Cancel the call timeout and the repeated ringing alerts."""
        for handle in (self.timer, self.repeat):
            if handle is not None:
                handle.cancel()
        self.timer = self.repeat = None

    def may_ring_by_alert(self) -> bool:
        """True while a device rung by alert push (or about to be) has not woken up."""
        if self.context.finished:
            return False
        return any(w.alert_call and w.waiting for w in self.wakeups.values())

    def ringing_by_alert(self) -> list[Wakeup]:
        """Devices to ring again by alert push: pushed, not awake, not ringing over SIP."""
        if self.context.finished:
            return []
        out = []
        for wakeup in self.wakeups.values():
            branch = self.forked.get(device_id(wakeup.binding))
            sip_ringing = branch is not None and branch.provisional and not branch.done
            pushed = wakeup.state in ("pushing", "pushed")
            if wakeup.alert_call and pushed and not sip_ringing:
                out.append(wakeup)
        return out

    def voip_waiting(self) -> bool:
        """True while a device woken by a VoIP push may still register."""
        return any(w.waiting and w.push.service is PushService.VOIP for w in self.wakeups.values())

    def view(self, now: float) -> dict[str, object]:
        """A JSON-ready summary (admin API)."""
        return {
            "call_id": self.context.request.call_id,
            "aor": self.aor,
            "age": round(now - self.started, 3),
            "cancelled": self.cancelled,
            "devices": [
                {
                    "instance": w.binding.instance,
                    "provider": w.push.provider,
                    "service": w.push.service.value,
                    "state": w.state,
                }
                for w in self.wakeups.values()
            ],
        }

    def story(self) -> list[dict[str, object]]:
        """One log record per device: pushed -> registered -> forwarded -> answered (ms)."""

        def ms(at: float | None, since: float) -> float | None:
            return None if at is None else round((at - since) * 1000, 1)

        final = self.context.final
        return [
            {
                "call_id": self.context.request.call_id,
                "aor": self.aor,
                "instance": w.binding.instance,
                "provider": w.push.provider,
                "service": w.push.service.value,
                "push": w.state,
                "registered_ms": ms(w.registered_at, w.pushed_at),
                "forwarded_ms": ms(w.forwarded_at, w.pushed_at),
                "answered": w.answered,
                "caller_got": final.status if final is not None else None,
                "cancelled": self.cancelled,
            }
            for w in self.wakeups.values()
        ]
