"""`sip.overload` and `routing.timer_c`: read from the file, checked, applied, reloaded."""

from __future__ import annotations

import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

from sipushd.app import Daemon, reload_config_file
from sipushd.app_settings import proxy_settings
from sipushd.config import Config, ConfigError, load_config
from sipushd.sip import Request, Response
from sipushd.testing.ua import SipClient

MINIMAL = "sip:\n  domains: [example.org]\n  listen: ['udp:127.0.0.1:5060']\n"


def test_defaults() -> None:
    config = load_config_text(MINIMAL)
    assert config.sip.overload.max_transactions == 50_000
    assert config.sip.overload.retry_after == 10
    assert config.sip.overload.max_udp_backlog == 2 * 1024 * 1024
    # RFC 3261 §16.6 step 11: Timer C is larger than 3 minutes.
    assert config.routing.timer_c > 180
    assert proxy_settings(config).timer_c == config.routing.timer_c


def test_values_reach_the_proxy_settings() -> None:
    config = load_config_text(MINIMAL + "routing:\n  timer_c: 240\n")
    assert proxy_settings(config).timer_c == 240


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("routing:\n  timer_c: 180\n", "routing.timer_c", 5),
        ("  overload:\n    max_transactions: 5\n", "sip.overload.max_transactions", 5),
        ("  overload:\n    retry_after: 0\n", "sip.overload.retry_after", 5),
        ("  overload:\n    max_udp_backlog: -1\n", "sip.overload.max_udp_backlog", 5),
        ("  overload:\n    retry_aftr: 5\n", "sip.overload.retry_aftr", 5),
    ],
)
def test_bad_values_name_the_key_and_line(tmp_path: Path, text: str, key: str, line: int) -> None:
    path = tmp_path / "sipushd.yaml"
    path.write_text(MINIMAL + text)
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    problems = {p.path: p for p in info.value.problems}
    assert key in problems, info.value.problems
    assert problems[key].line == line


def load_config_text(text: str) -> Config:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sipushd.yaml"
        path.write_text(text)
        return load_config(path, env={})


def _invite(client: SipClient, n: int) -> Request:
    host, port = client.local
    return client.build(
        "INVITE",
        "sip:nobody@example.org",
        [("Contact", f"<sip:ua@{host}:{port}>"), ("Content-Type", "application/sdp")],
        b"v=0\r\n",
        call_id=f"shed-{n}",
    )


def _overload_config(tmp_path: Path, overload: dict[str, int]) -> tuple[dict[str, Any], Path]:
    """A loopback UDP config with `sip.overload` set, written to a file: (raw, path)."""
    raw: dict[str, Any] = {
        "sip": {"domains": ["example.org"], "listen": ["udp:127.0.0.1:0"], "overload": overload},
        "storage": {"sqlite": {"path": ":memory:"}},
        "admin": {"listen": "127.0.0.1:0"},
        "push": {"mock": {"enabled": True}},
    }
    path = tmp_path / "sipushd.yaml"
    path.write_text(yaml.safe_dump(raw))
    return raw, path


@pytest.mark.asyncio
async def test_overload_limits_apply_and_reload(tmp_path: Path) -> None:
    raw, path = _overload_config(tmp_path, {"max_transactions": 100, "retry_after": 42})
    daemon = Daemon(load_config(path))
    await daemon.start()
    udp = daemon.listeners[0]
    try:
        async with await SipClient.connect("udp", (udp.host, udp.port)) as alice:
            # Over UDP each answered OPTIONS stays a live transaction for Timer J (§17.2.2).
            for n in range(101):
                alice.send(alice.build("OPTIONS", "sip:example.org", call_id=f"opt-{n}"))
                assert (await alice.final_response()).status == 200
            alice.send(_invite(alice, 1))
            shed = await alice.final_response()
            assert isinstance(shed, Response)
            assert (shed.status, shed.headers.get("Retry-After")) == (503, "42")

            raw["sip"]["overload"] = {"max_transactions": 100_000, "retry_after": 7}
            path.write_text(yaml.safe_dump(raw))
            await reload_config_file(daemon, path)  # SIGHUP: the new limits apply at once
            assert daemon.server is not None
            assert (daemon.server.max_transactions, daemon.server.retry_after) == (100_000, 7)
            alice.send(_invite(alice, 2))
            # Nobody is registered: the INVITE now reaches the location service.
            assert (await alice.final_response()).status == 480
    finally:
        await daemon.stop(0)


@pytest.mark.asyncio
@pytest.mark.skipif(sys.platform != "linux", reason="the UDP backlog is read with SO_MEMINFO")
async def test_a_deep_udp_backlog_sheds_new_invites(tmp_path: Path) -> None:
    raw, path = _overload_config(tmp_path, {"max_udp_backlog": 4096, "retry_after": 9})
    daemon = Daemon(load_config(path))
    await daemon.start()
    udp = daemon.listeners[0]

    async def invite_behind_a_burst(alice: SipClient, n: int) -> Response:
        # The INVITE is read first; the OPTIONS behind it wait in the socket meanwhile.
        alice.send(_invite(alice, n))
        for m in range(40):
            alice.send(alice.build("OPTIONS", "sip:example.org", call_id=f"burst-{n}-{m}"))
        answers = [await alice.final_response() for _ in range(41)]
        [answer] = [a for a in answers if a.cseq.method == "INVITE"]
        assert isinstance(answer, Response)
        return answer

    try:
        async with await SipClient.connect("udp", (udp.host, udp.port)) as alice:
            shed = await invite_behind_a_burst(alice, 1)
            assert (shed.status, shed.headers.get("Retry-After")) == (503, "9")
            raw["sip"]["overload"] = {"max_udp_backlog": 0}
            path.write_text(yaml.safe_dump(raw))
            await reload_config_file(daemon, path)  # 0: no backlog limit
            # Nobody is registered: the INVITE now reaches the location service.
            assert (await invite_behind_a_burst(alice, 2)).status == 480
    finally:
        await daemon.stop(0)


@pytest.mark.asyncio
@pytest.mark.skipif(sys.platform != "linux", reason="the UDP backlog is read with SO_MEMINFO")
async def test_a_small_receive_buffer_sheds_when_three_quarters_full(tmp_path: Path) -> None:
    # A kernel whose net.core.rmem_max caps the buffer below max_udp_backlog: three quarters
    # of the real queue is the limit, so shedding starts before the kernel drops datagrams.
    _, path = _overload_config(tmp_path, {"max_udp_backlog": 1 << 30})
    daemon = Daemon(load_config(path))
    await daemon.start()
    udp = daemon.listeners[0]
    try:
        [(_, listener)] = daemon.transport._udp  # type: ignore[union-attr]
        sock = listener._transport.get_extra_info("socket")  # type: ignore[union-attr]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        async with await SipClient.connect("udp", (udp.host, udp.port)) as alice:
            alice.send(_invite(alice, 1))
            for m in range(30):  # more than the small queue holds: some are dropped
                alice.send(alice.build("OPTIONS", "sip:example.org", call_id=f"fill-{m}"))
            answer = await alice.final_response()
            while answer.cseq.method != "INVITE":
                answer = await alice.final_response()
            assert answer.status == 503
    finally:
        await daemon.stop(0)
