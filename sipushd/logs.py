"""Logging setup: structlog events and stdlib records rendered the same way.

One JSON object per line for machines (`format: json`), or readable lines
for humans (`format: console`, or whenever the output is a terminal). Log
context such as `call_id` is bound with `structlog.contextvars` and lands on
every line. Rule: push tokens are never logged in full — `redact_event`
shortens values under token-like keys and `pn-prid=`/`pn-tok=` URI
parameters inside any string; secrets (passwords, HA1, bearer tokens) are
blanked. Library code never calls `configure_logging`; the app does.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "TOKEN_KEYS",
    "configure_logging",
    "get_logger",
    "redact_event",
    "redact_token",
    "set_level",
]

# Keys whose values are push tokens (RFC 8599 pn-prid and legacy names).
TOKEN_KEYS = frozenset(
    {
        "token",
        "tokens",
        "pn_prid",
        "pn-prid",
        "prid",
        "pn_tok",
        "pn-tok",
        "push_token",
        "device_token",
        "registration_token",
        "apns_token",
        "fcm_token",
        "voip_token",
        "remote_token",
    }
)
# Keys whose values must not appear at all.
SECRET_KEYS = frozenset(
    {"password", "secret", "ha1", "authorization", "admin_token", "api_key", "bearer"}
)
_TOKEN_SUFFIXES = ("_token", "_prid", "_tokens")
# RFC 8599 §4.1: pn-prid carries the device token; legacy pn-tok likewise.
_URI_TOKEN = re.compile(r"(?i)(pn-(?:prid|tok)=)([^;>\s\"',?]+)")
_CHATTY_LIBRARIES = ("hpack", "h2", "aiosqlite")
_MAX_DEPTH = 4


def redact_token(token: str) -> str:
    """`abcdef12…(64)`: the first 8 characters (half of a short token) and the length."""
    keep = 8 if len(token) > 16 else len(token) // 2
    return f"{token[:keep]}…({len(token)})"


def _is_token_key(key: str) -> bool:
    key = key.lower()
    return key in TOKEN_KEYS or (key.endswith(_TOKEN_SUFFIXES) and key not in SECRET_KEYS)


def _redact_tokens_in(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, list | tuple | set | frozenset):
        return [_redact_tokens_in(item) for item in value]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return redact_token(str(value))


def _redact(key: str, value: Any, depth: int) -> Any:
    lowered = key.lower()
    if lowered in SECRET_KEYS:
        return None if value is None else "<redacted>"
    if _is_token_key(lowered):
        return _redact_tokens_in(value)
    if isinstance(value, str):
        return _URI_TOKEN.sub(_shorten_match, value) if "pn-" in value.lower() else value
    if isinstance(value, bytes) and b"pn-" in value.lower():
        return _URI_TOKEN.sub(_shorten_match, value.decode("utf-8", "replace"))
    if depth >= _MAX_DEPTH:
        return value
    if isinstance(value, dict):
        return {k: _redact(str(k), v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(key, item, depth + 1) for item in value]
    return value


def _shorten_match(match: re.Match[str]) -> str:
    return match.group(1) + redact_token(match.group(2))


def redact_event(
    logger: WrappedLogger, method_name: str, event_dict: EventDict
) -> MutableMapping[str, Any]:
    """structlog processor: shorten push tokens and blank secrets anywhere in the event."""
    for key, value in list(event_dict.items()):
        if not key.startswith("_"):  # leave structlog's private keys (_record, ...) alone
            event_dict[key] = _redact(key, value, 0)
    return event_dict


def _level_number(level: str | int) -> int:
    if isinstance(level, int):
        return level
    number = logging.getLevelNamesMapping().get(level.upper())
    if number is None:
        raise ValueError(f"unknown log level {level!r}")
    return number


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_event,
    ]


def _renderers(console: bool, colors: bool) -> Iterable[Processor]:
    yield structlog.stdlib.ProcessorFormatter.remove_processors_meta
    if console:
        yield structlog.dev.ConsoleRenderer(colors=colors)
    else:
        yield structlog.processors.format_exc_info
        yield structlog.processors.JSONRenderer(ensure_ascii=False)


def configure_logging(
    format: str = "json", level: str | int = "info", *, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging to `stream` (stderr) as JSON lines or console text."""
    out = sys.stderr if stream is None else stream
    is_tty = out.isatty()
    shared = _shared_processors()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=list(_renderers(format == "console" or is_tty, is_tty)),
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    handler.set_name("sipushd")
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == "sipushd"]:
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    for name in _CHATTY_LIBRARIES:  # their debug output is per frame / per query
        logging.getLogger(name).setLevel(logging.WARNING)


def set_level(level: str | int) -> None:
    """Change the log level of everything (SIGHUP reload)."""
    logging.getLogger().setLevel(_level_number(level))


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger that goes through the configured pipeline."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
