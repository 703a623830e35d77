"""In-process recorder provider (``push.mock.enabled``): accepts every push and keeps it.

It builds the same APNs / FCM payload the real provider would send, logs it
and keeps the last ``keep`` pushes in ``pushes``, so a newcomer can watch
the pushes sipushd would send without Apple or Google accounts.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from sipushd.core.payload import (
    ApnsPush,
    FcmPush,
    PayloadError,
    PayloadTemplate,
    PushRequest,
    build_apns,
    build_fcm,
)
from sipushd.push.base import (
    PermanentPushError,
    PushOutcome,
    PushProvider,
    PushResult,
    redact_token,
)

log = structlog.get_logger("sipushd.push.mock")


@dataclass(frozen=True)
class MockPush:
    """One recorded push: the request, what would have been sent, and when."""

    request: PushRequest
    push: ApnsPush | FcmPush
    time: float
    push_id: str


class MockProvider(PushProvider):
    """Records pushes instead of sending them; always answers 200."""

    name = "mock"

    def __init__(
        self,
        *,
        keep: int = 1000,
        templates: Mapping[str, PayloadTemplate] | None = None,
        on_push: Callable[[MockPush], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pushes: deque[MockPush] = deque(maxlen=keep)
        self._templates = dict(templates or {})
        self._on_push = on_push
        self._clock = clock
        self._count = 0

    async def send(self, request: PushRequest) -> PushResult:
        """Build the payload the real provider would send and record it."""
        now = self._clock()
        template = self._templates.get(request.app_id)
        try:
            push: ApnsPush | FcmPush
            if request.provider == "apns":
                push = build_apns(request, now, template)
            else:
                push = build_fcm(request, now, template)
        except PayloadError as exc:
            raise PermanentPushError("invalid_request", None, str(exc)) from exc
        self._count += 1
        record = MockPush(request, push, now, f"mock-{self._count}")
        self.pushes.append(record)
        log.info(
            "push recorded",
            provider=request.provider,
            kind=request.kind.value,
            app=request.app_id,
            token=redact_token(request.token),
            call_id=request.call_id,
            payload=_payload_of(push),
        )
        if self._on_push is not None:
            self._on_push(record)
        return PushResult(PushOutcome.DELIVERED, self.name, 200, push_id=record.push_id)


def _payload_of(push: ApnsPush | FcmPush) -> Mapping[str, Any]:
    return push.payload if isinstance(push, ApnsPush) else push.data
