"""Scripted answers for the mock push service: the `--respond RULE` syntax and its matching.

Rules are tried in the order given. The first matching rule with a STATUS decides the
answer; the first matching rule without one (`delay=...`) only makes answers late. A rule
with `first=N` stops matching after N requests. Rules only see requests that would
otherwise succeed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

RULE_HELP = """\
--respond RULE scripts answers to otherwise valid pushes (repeatable, tried in order:
the first matching rule with a STATUS decides, the first matching delay-only rule delays):
  RULE      = [SELECTORS:]STATUS[:REASON][:OPTION...]    fail matching pushes
            | [SELECTORS:]delay=SECONDS[:OPTION...]       only answer late
  SELECTORS = comma-separated token=TOKEN (exact, * for any, or PREFIX*),
              provider=apns|fcm
  STATUS    = 400..599; REASON = APNs reason or FCM errorCode (default by status,
              e.g. 410 Unregistered, 404 UNREGISTERED, 429 TooManyRequests/QUOTA_EXCEEDED)
  OPTION    = first=N (only the first N matching pushes), retry-after=SECONDS
              (adds a retry-after header), delay=SECONDS (answer late)
examples:
  token=ABC:410:Unregistered                    this APNs token is dead
  token=*:500:InternalServerError:first=2       two failures, then success
  provider=apns:429:TooManyRequests:retry-after=1
  provider=fcm:404:UNREGISTERED
  delay=0.3                                     every answer 300 ms late"""

_SELECTORS = ("token", "provider")
_OPTIONS = ("first", "retry-after", "delay")
_PROVIDERS = ("apns", "fcm", "*")
_STATUS = re.compile(r"\d{3}")
_REASON = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


class RuleError(ValueError):
    """A --respond rule that does not parse; the message names the rule."""

    def __init__(self, rule: str, problem: str) -> None:
        super().__init__(f"bad --respond rule {rule!r}: {problem}")
        self.rule = rule


@dataclass(frozen=True, slots=True)
class ResponseRule:
    """One parsed rule; `status` None means the rule only delays answers."""

    text: str
    token: str = "*"
    provider: str = "*"
    status: int | None = None
    reason: str | None = None
    first: int | None = None
    retry_after: str | None = None
    delay: float = 0.0

    def matches(self, provider: str, token: str) -> bool:
        """Whether the rule's selectors cover this push."""
        if self.provider != "*" and self.provider != provider:
            return False
        if self.token == "*":
            return True
        if self.token.endswith("*"):
            return token.startswith(self.token[:-1])
        return token == self.token


def parse_rule(text: str) -> ResponseRule:
    """Parse one --respond rule (see RULE_HELP); raises RuleError."""
    fields = text.split(":")
    # FCM tokens contain ':', so the selectors run up to the first STATUS or OPTION field.
    end = 0
    if fields[0] == "*" or fields[0].partition("=")[0] in _SELECTORS:
        end = next((i for i in range(1, len(fields)) if _starts_tail(fields[i])), len(fields))
    values: dict[str, str] = {}
    for selector in ":".join(fields[:end]).split(",") if end else ():
        key, eq, value = selector.partition("=")
        if selector == "*":
            continue
        if key not in _SELECTORS or not eq or not value:
            raise RuleError(text, f"unknown selector {selector!r} (use token=... or provider=...)")
        values[key] = value
    rest = fields[end:]
    status = reason = None
    if rest and _STATUS.fullmatch(rest[0]):
        status = int(rest.pop(0))
        if not 400 <= status <= 599:
            raise RuleError(text, f"status {status} is not an error status (400..599)")
        if rest and "=" not in rest[0]:
            reason = rest.pop(0)
            if not _REASON.fullmatch(reason):
                raise RuleError(text, f"reason {reason!r} is not a word")
    options = _parse_options(text, rest)
    provider = values.get("provider", "*")
    if provider not in _PROVIDERS:
        raise RuleError(text, f"provider must be apns or fcm, not {provider!r}")
    if status is None and "delay" not in options:
        raise RuleError(text, "needs a STATUS (e.g. 410) or delay=SECONDS")
    first = options.get("first")
    return ResponseRule(
        text=text,
        token=values.get("token", "*"),
        provider=provider,
        status=status,
        reason=reason,
        first=int(first) if first is not None else None,
        retry_after=options.get("retry-after"),
        delay=float(options.get("delay", 0.0)),
    )


def _starts_tail(field: str) -> bool:
    return bool(_STATUS.fullmatch(field)) or field.partition("=")[0] in _OPTIONS


def _parse_options(text: str, fields: Sequence[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for option in fields:
        key, eq, value = option.partition("=")
        if key not in _OPTIONS or not eq:
            raise RuleError(
                text, f"unknown field {option!r} (options: first=, retry-after=, delay=)"
            )
        if key in ("first", "retry-after") and not (value.isascii() and value.isdigit()):
            raise RuleError(text, f"{key} needs a whole number, not {value!r}")
        if key == "first" and int(value) < 1:
            raise RuleError(text, "first needs a number >= 1")
        if key == "delay":
            try:
                seconds = float(value)
            except ValueError:
                seconds = -1.0
            if not 0 <= seconds <= 3600:
                raise RuleError(text, f"delay needs seconds between 0 and 3600, not {value!r}")
        options[key] = value
    return options


class RuleSet:
    """Ordered rules with their use counters (for `first=N`)."""

    def __init__(self, rules: Sequence[ResponseRule]) -> None:
        self.rules = tuple(rules)
        self._used = [0] * len(self.rules)

    def pick(self, provider: str, token: str) -> tuple[ResponseRule | None, float]:
        """The rule deciding this push's answer (None: succeed) and the answer's delay."""
        delay: float | None = None
        for i, rule in enumerate(self.rules):
            if not rule.matches(provider, token):
                continue
            if rule.first is not None and self._used[i] >= rule.first:
                continue
            self._used[i] += 1
            if rule.status is not None:
                return rule, rule.delay or delay or 0.0
            if delay is None:
                delay = rule.delay
        return None, delay or 0.0
