"""sipushd.push: push providers (APNs, FCM, in-process mock) and the dispatcher.

Build ``ApnsProvider`` / ``FcmProvider`` / ``MockProvider`` from the frozen
settings in ``sipushd.push.settings``, hand them to a ``Dispatcher`` keyed by
provider name ("apns", "fcm"), then ``submit(PushRequest)``.
"""

from sipushd.push.base import (
    PermanentPushError,
    PushError,
    PushOutcome,
    PushProvider,
    PushResult,
    TemporaryPushError,
)
from sipushd.push.dispatcher import DeadTokenHook, Dispatcher, DispatcherStats, ResultHook
from sipushd.push.settings import ApnsAppSettings, DispatcherSettings, FcmAppSettings

__all__ = [
    "ApnsAppSettings",
    "DeadTokenHook",
    "Dispatcher",
    "DispatcherSettings",
    "DispatcherStats",
    "FcmAppSettings",
    "PermanentPushError",
    "PushError",
    "PushOutcome",
    "PushProvider",
    "PushResult",
    "ResultHook",
    "TemporaryPushError",
]
