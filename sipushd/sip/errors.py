"""The one exception the SIP message layer raises for malformed input."""

from __future__ import annotations


class SipParseError(ValueError):
    """Malformed SIP input; ``status_hint`` is the response a server should send."""

    def __init__(self, message: str, status_hint: int = 400) -> None:
        super().__init__(message)
        self.status_hint = status_hint
