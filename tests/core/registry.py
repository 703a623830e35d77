"""A registrar under test plus the bindings a store would hold, for the registrar test modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from sipushd.core.binding import Binding
from sipushd.core.registrar import RegisterDecision, Registrar, RegistrarSettings
from sipushd.sip import Endpoint, Request

DOMAINS = ("example.org",)
PROVIDERS = ("apns", "apns.dev", "fcm")


class Registry:
    """A registrar plus the bindings a store would hold, with time stepped by hand.

    Subclasses name where REGISTERs come from (`source`) and when the clock starts (`start`).
    """

    source: ClassVar[Endpoint]
    start: ClassVar[float]

    def __init__(self, providers: Sequence[str] = PROVIDERS, **settings: int) -> None:
        self.registrar = Registrar(RegistrarSettings(**settings))
        self.providers = providers
        self.bindings: dict[str, Binding] = {}
        self.now = self.start

    def send(self, request: Request, source: Endpoint | None = None) -> RegisterDecision:
        """Let the registrar decide, then apply the decision as the store would."""
        decision = self.registrar.decide(
            request,
            source or self.source,
            list(self.bindings.values()),
            self.now,
            domains=DOMAINS,
            supported_providers=self.providers,
        )
        if decision.ok:
            for key in decision.removal_keys:
                del self.bindings[key]
            for binding in decision.upserts:
                self.bindings[binding.key] = binding
        return decision


def header(decision: RegisterDecision, name: str) -> list[str]:
    """The values of the header fields `name` the decision adds to the response."""
    return [v for n, v in decision.headers if n == name]
