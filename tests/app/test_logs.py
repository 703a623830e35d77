"""Logging: JSON lines with bound context, push tokens never in full."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from sipushd.logs import configure_logging, get_logger, redact_token, set_level

TOKEN = "0123456789abcdef" * 4  # a 64-hex-digit APNs token
SHORT = "01234567…(64)"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    yield out
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


def lines(out: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_redact_token_keeps_prefix_and_length() -> None:
    assert redact_token(TOKEN) == SHORT
    assert redact_token("abcdef") == "abc…(6)"  # short tokens show half at most
    assert redact_token("") == "…(0)"


def test_json_lines_carry_call_id_and_redacted_tokens(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    structlog.contextvars.bind_contextvars(call_id="a84b4c76e66710")
    log = get_logger("sipushd.push")
    log.info(
        "push_sent",
        pn_prid=TOKEN,
        binding={"voip_token": TOKEN, "aor": "sip:alice@example.org"},
        contact=f"<sip:alice@10.0.0.1;pn-provider=apns;pn-prid={TOKEN}:voip>",
        tokens=[TOKEN, TOKEN],
        password="hunter2",
    )
    text = stream.getvalue()
    assert TOKEN not in text
    assert "hunter2" not in text
    (event,) = lines(stream)
    assert event["event"] == "push_sent"
    assert event["call_id"] == "a84b4c76e66710"
    assert event["level"] == "info" and event["logger"] == "sipushd.push"
    assert event["pn_prid"] == SHORT
    assert event["binding"] == {"voip_token": SHORT, "aor": "sip:alice@example.org"}
    assert event["contact"] == "<sip:alice@10.0.0.1;pn-provider=apns;pn-prid=01234567…(69)>"
    assert event["tokens"] == [SHORT, SHORT]
    assert event["password"] == "<redacted>"
    assert "timestamp" in event


def test_stdlib_logging_is_rendered_as_json_and_redacted(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    logging.getLogger("aioapns").warning("retrying", extra={"push_token": TOKEN})
    (event,) = lines(stream)
    assert event["event"] == "retrying"
    assert event["logger"] == "aioapns" and event["level"] == "warning"
    assert event["push_token"] == SHORT


def test_level_filter_and_set_level(stream: io.StringIO) -> None:
    configure_logging("json", "warning", stream=stream)
    log = get_logger("t")
    log.info("hidden")
    set_level("debug")
    log.debug("shown")
    assert [e["event"] for e in lines(stream)] == ["shown"]


def test_exceptions_are_one_json_line(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=stream)
    try:
        raise ValueError("bad")
    except ValueError:
        get_logger("t").exception("failed")
    (event,) = lines(stream)
    assert "ValueError: bad" in str(event["exception"])


def test_console_format(stream: io.StringIO) -> None:
    configure_logging("console", "info", stream=stream)
    get_logger("t").info("registered", aor="sip:bob@example.org", pn_prid=TOKEN)
    text = stream.getvalue()
    assert "registered" in text and "sip:bob@example.org" in text
    assert TOKEN not in text and SHORT in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_reconfiguring_replaces_the_handler(stream: io.StringIO) -> None:
    configure_logging("json", "info", stream=io.StringIO())
    configure_logging("json", "info", stream=stream)
    get_logger("t").info("once")
    assert [e["event"] for e in lines(stream)] == ["once"]


def test_unknown_level_is_rejected(stream: io.StringIO) -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        set_level("loud")
