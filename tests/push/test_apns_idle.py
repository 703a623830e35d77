"""APNs connection idle timeout: one timer per connection, closed after INACTIVITY_TIME idle."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from sipushd.push.apns import _ClientProtocol


class _Handle:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class _Loop:
    """Just enough event loop: a settable clock and a list of timers."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[_Handle] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> _Handle:
        handle = _Handle(when, callback)
        self.timers.append(handle)
        return handle

    def fire_due(self) -> None:
        for handle in list(self.timers):
            if not handle.cancelled and handle.when <= self.now:
                self.timers.remove(handle)
                handle.callback()


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def _connect() -> tuple[_ClientProtocol, _Loop, _Transport]:
    loop, transport = _Loop(), _Transport()
    protocol = _ClientProtocol("", cast(Any, loop), None, None)
    protocol.connection_made(cast(asyncio.Transport, transport))
    return protocol, loop, transport


def test_activity_does_not_add_timers() -> None:
    protocol, loop, transport = _connect()
    for _ in range(50):
        loop.now += 1.0
        protocol.flush()
    assert len(loop.timers) == 1
    assert not transport.closed


def test_timer_is_pushed_back_by_activity() -> None:
    protocol, loop, transport = _connect()
    idle = protocol.INACTIVITY_TIME
    loop.now += idle / 2
    protocol.flush()
    loop.now += idle / 2
    loop.fire_due()
    assert not transport.closed
    assert [t.when for t in loop.timers] == [loop.now + idle / 2]
    loop.now += idle / 2
    loop.fire_due()
    assert transport.closed


def test_idle_connection_closes() -> None:
    protocol, loop, transport = _connect()
    loop.now += protocol.INACTIVITY_TIME
    loop.fire_due()
    assert transport.closed
