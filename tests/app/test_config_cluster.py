"""`storage.redis.advertise`: the address other nodes reach this one at, checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from sipushd.config import Config, ConfigError, ListenSpec, Problem, load_config

HEAD = (
    "sip:\n"  # 1
    "  domains: [example.org]\n"  # 2
    "  listen: ['udp:0.0.0.0:5060', 'tcp:0.0.0.0:5060']\n"  # 3
    "storage:\n"  # 4
    "  backend: redis\n"  # 5
    "  redis:\n"  # 6
)


def load(tmp_path: Path, advertise: str) -> Config:
    path = tmp_path / "sipushd.yaml"
    path.write_text(HEAD + f"    advertise: '{advertise}'\n")  # line 7
    return load_config(path, env={})


def problem_of(tmp_path: Path, advertise: str) -> Problem:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, advertise)
    (problem,) = info.value.problems
    return problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:10.0.0.2:5060", ListenSpec(transport="udp", host="10.0.0.2", port=5060)),
        ("TCP:10.0.0.2", ListenSpec(transport="tcp", host="10.0.0.2", port=5060)),
        ("udp:[fd00::2]:5070", ListenSpec(transport="udp", host="fd00::2", port=5070)),
    ],
)
def test_good_advertise_addresses(tmp_path: Path, text: str, expected: ListenSpec) -> None:
    config = load(tmp_path, text)
    assert config.storage.redis.advertise == expected


def test_advertise_defaults_to_none(tmp_path: Path) -> None:
    path = tmp_path / "sipushd.yaml"
    path.write_text(HEAD + "    url: redis://127.0.0.1:6379/0\n")
    assert load_config(path, env={}).storage.redis.advertise is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("udp:sip.example.org:5060", "must be an IP address"),  # peers send without DNS
        ("udp:0.0.0.0:5060", "cannot send to it"),
        ("udp:10.0.0.2:0", "cannot send to it"),
        ("sctp:10.0.0.2:5060", "udp|tcp|tls:IP:PORT"),
        ("udp:10.0.0.2:99999", "bad port"),
    ],
)
def test_bad_advertise_names_key_and_line(tmp_path: Path, text: str, fragment: str) -> None:
    problem = problem_of(tmp_path, text)
    assert (problem.path, problem.line) == ("storage.redis.advertise", 7)
    assert fragment in problem.message


def test_advertised_transport_must_be_listened_on(tmp_path: Path) -> None:
    problem = problem_of(tmp_path, "tls:10.0.0.2:5061")
    assert (problem.path, problem.line) == ("storage.redis.advertise", 7)
    assert "no sip.listen entry for tls" in problem.message
