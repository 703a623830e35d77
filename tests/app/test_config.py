"""Config loading: every problem named by key path and line, all at once."""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sipushd import config as config_module
from sipushd.cli import COMMANDS
from sipushd.config import ConfigError, ListenSpec, Problem, load_config

REPO = Path(__file__).resolve().parents[2]
MINIMAL = "sip:\n  domains: [example.org]\n  listen: ['udp:127.0.0.1:5060']\n"


def write(tmp_path: Path, text: str, name: str = "sipushd.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems_of(path: Path, **kwargs: object) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, **kwargs)  # type: ignore[arg-type]
    return info.value.problems


def by_path(problems: list[Problem]) -> dict[str, Problem]:
    return {problem.path: problem for problem in problems}


# --- shipped files ------------------------------------------------------------------------


def test_shipped_development_config_is_valid() -> None:
    config = load_config(REPO / "config" / "sipushd.yaml", env={})
    assert [str(spec) for spec in config.sip.listen] == ["udp:127.0.0.1:5060", "tcp:127.0.0.1:5060"]
    assert config.auth.enabled is False
    assert config.push.mock.enabled is True
    assert config.storage.sqlite.path == REPO / "data" / "sipushd.db"
    assert config.logging.format == "console"
    assert config.source_path == REPO / "config" / "sipushd.yaml"
    assert config.warnings == ()


def test_development_config_port_comes_from_environment() -> None:
    config = load_config(REPO / "config" / "sipushd.yaml", env={"SIPUSHD_SIP_PORT": "15060"})
    assert {spec.port for spec in config.sip.listen} == {15060}


def test_production_example_is_structurally_valid() -> None:
    path = REPO / "config" / "production.example.yaml"
    config = load_config(path, check_files=False, env={})
    assert "tls" in {spec.transport for spec in config.sip.listen}
    assert config.sip.tls is not None
    assert config.auth.enabled and config.auth.users_file == Path("/etc/sipushd/private/users.yaml")
    token_app, cert_app = config.push.apns
    assert token_app.token_auth and token_app.key_id
    assert not cert_app.token_auth and cert_app.cert_file is not None
    assert config.push.fcm[0].project_id == "example-phone"
    assert config.auth.secret is None and config.admin.token is None  # `${VAR:-}` is null
    assert config.storage.sqlite.path == Path("/var/lib/sipushd/sipushd.db")


def test_production_example_uses_systemd_directories_from_environment() -> None:
    env = {"CREDENTIALS_DIRECTORY": "/run/credentials/sipushd.service"}
    env |= {"STATE_DIRECTORY": "/var/lib/sipushd2", "SIPUSHD_ADMIN_TOKEN": "t" * 32}
    config = load_config(REPO / "config" / "production.example.yaml", check_files=False, env=env)
    assert config.sip.tls is not None
    assert config.sip.tls.key_file == Path("/run/credentials/sipushd.service/tls.key")
    assert config.storage.sqlite.path == Path("/var/lib/sipushd2/sipushd.db")
    assert config.admin.token is not None and config.admin.token.get_secret_value() == "t" * 32


def test_production_example_file_checks_name_each_missing_file() -> None:
    path = REPO / "config" / "production.example.yaml"
    problems = by_path(problems_of(path))
    assert "sip.tls.cert_file" in problems
    assert "push.apns[1].cert_file" in problems
    assert "push.fcm[0].service_account_file" in problems
    assert all(p.message.startswith("file not found") for p in problems.values())
    assert all(p.line is not None for p in problems.values())


# --- errors with key and line -------------------------------------------------------------


def test_several_problems_reported_at_once_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sip:\n"  # 1
        "  domains: [example.org]\n"  # 2
        "  listen: ['udp:127.0.0.1:5060', 'sctp:1.2.3.4:5060']\n"  # 3
        "  colour: blue\n"  # 4
        "registrar:\n"  # 5
        "  min_expires: lots\n"  # 6
        "routing:\n"  # 7
        "  upstream: http://pbx\n",  # 8
    )
    problems = by_path(problems_of(path))
    assert problems["sip.listen[1]"].line == 3
    assert "sctp" in problems["sip.listen[1]"].message
    assert problems["sip.colour"] == Problem("sip.colour", 4, "unknown key 'colour'")
    assert problems["registrar.min_expires"].line == 6
    assert "integer" in problems["registrar.min_expires"].message
    assert problems["routing.upstream"].line == 8
    assert len(problems) == 4


def test_error_string_lists_one_problem_per_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "admin: {listen: nowhere}\nlogging: {level: loud}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("admin.listen (line 4): ")
    assert lines[1].startswith("logging.level (line 5): ")


def test_unknown_key_suggests_the_right_name(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "registrar:\n  max_expire: 3600\n")
    (problem,) = problems_of(path)
    assert problem == Problem(
        "registrar.max_expire", 5, "unknown key 'max_expire' (did you mean 'max_expires'?)"
    )


def test_unknown_top_level_section(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "pushh: {}\n")
    (problem,) = problems_of(path)
    assert (problem.path, problem.line) == ("pushh", 4)
    assert "did you mean 'push'" in problem.message


def test_missing_required_section(tmp_path: Path) -> None:
    path = write(tmp_path, "logging: {level: info}\n")
    (problem,) = problems_of(path)
    assert problem.path == "sip"
    assert problem.message == "required key is missing"


def test_empty_file_needs_sip_section(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, ""))
    assert problem.path == "sip"


def test_root_must_be_a_mapping(tmp_path: Path) -> None:
    (problem,) = problems_of(write(tmp_path, "- sip\n- push\n"))
    assert problem.line == 1 and "mapping" in problem.message


def test_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "sip:\n  domains: [example.org\nauth:\n  enabled: true\n")
    (problem,) = problems_of(path)
    assert problem.line == 3
    assert problem.message.startswith("YAML syntax error")


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "auth: {enabled: false}\nauth: {enabled: false}\n")
    (problem,) = problems_of(path)
    assert problem == Problem("auth", 5, "duplicate key 'auth' (first at line 4)")


def test_missing_config_file(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path / "nope.yaml")
    assert "cannot read" in problem.message and problem.line is None


# --- listen specs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("udp:[::1]:5060", ListenSpec(transport="udp", host="::1", port=5060)),
        ("TCP:0.0.0.0:5070", ListenSpec(transport="tcp", host="0.0.0.0", port=5070)),
        ("tls:sip.example.org", ListenSpec(transport="tls", host="sip.example.org", port=5061)),
        ("udp:127.0.0.1:0", ListenSpec(transport="udp", host="127.0.0.1", port=0)),
    ],
)
def test_listen_specs_parse(tmp_path: Path, text: str, expected: ListenSpec) -> None:
    tls = "  tls: {cert_file: c.pem, key_file: k.pem}\n" if text.startswith("tls") else ""
    path = write(tmp_path, f"sip:\n  domains: [example.org]\n  listen: ['{text}']\n{tls}")
    config = load_config(path, check_files=False, env={})
    assert config.sip.listen == [expected]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("udp:::1:5060", "brackets"),
        ("udp:[::1:5060", "IPv6"),
        ("udp:127.0.0.1:70000", "port"),
        ("ws:127.0.0.1:80", "udp|tcp|tls"),
        ("udp:bad host:5060", "bad host"),
    ],
)
def test_bad_listen_specs(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, f"sip:\n  domains: [example.org]\n  listen:\n    - '{text}'\n")
    (problem,) = problems_of(path)
    assert (problem.path, problem.line) == ("sip.listen[0]", 4)
    assert fragment in problem.message


def test_ipv6_listener_prints_with_brackets() -> None:
    assert str(ListenSpec(transport="udp", host="::1", port=5060)) == "udp:[::1]:5060"


# --- cross-field rules --------------------------------------------------------------------


def test_tls_listener_needs_tls_section(tmp_path: Path) -> None:
    path = write(tmp_path, "sip:\n  domains: [example.org]\n  listen: ['tls:0.0.0.0:5061']\n")
    (problem,) = problems_of(path)
    assert problem.path == "sip.listen[0]" and "sip.tls" in problem.message


def test_auth_enabled_needs_users_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "auth:\n  enabled: true\n")
    (problem,) = problems_of(path)
    assert problem == Problem("auth.users_file", 4, "required when auth.enabled is true")


def test_expires_must_be_ordered(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "registrar:\n  min_expires: 600\n  default_expires: 60\n")
    (problem,) = problems_of(path)
    assert problem.path == "registrar.default_expires" and problem.line == 6
    assert "min_expires <= default_expires <= max_expires" in problem.message


def test_cross_field_rules_and_type_errors_in_other_sections_reported_together(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        MINIMAL + "auth: {enabled: true}\nregistrar: {min_expires: 600, default_expires: 60}\n"
        "push: {concurrency: many}\n",
    )
    assert set(by_path(problems_of(path))) == {
        "auth.users_file",
        "registrar.default_expires",
        "push.concurrency",
    }


def test_apns_app_needs_exactly_one_credential(tmp_path: Path) -> None:
    (tmp_path / "k.p8").write_text("key")
    (tmp_path / "c.pem").write_text("cert")
    path = write(
        tmp_path,
        MINIMAL + "push:\n  apns:\n"
        "    - {team_id: ABCD123456, bundle_id: org.example.a}\n"  # 6
        "    - {team_id: ABCD123456, bundle_id: org.example.b, key_file: k.p8, key_id: K1,\n"
        "       cert_file: c.pem}\n"
        "    - {team_id: ABCD123456, bundle_id: org.example.c, key_file: k.p8}\n",  # 9
    )
    problems = by_path(problems_of(path))
    assert "key_file + key_id" in problems["push.apns[0].key_file"].message
    assert problems["push.apns[0].key_file"].line == 6
    assert "not both" in problems["push.apns[1].cert_file"].message
    assert problems["push.apns[2].key_id"].message == "required with key_file"


def test_message_accept_timeout_must_beat_timer_f(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "routing: {message_accept_timeout: 40}\n")
    (problem,) = problems_of(path)
    assert problem.path == "routing.message_accept_timeout" and "Timer F" in problem.message


def test_trusted_networks_are_cidrs(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "auth:\n  trusted_networks: [10.0.0.0/8, 10.1.2.3/16]\n")
    (problem,) = problems_of(path)
    assert problem.path == "auth.trusted_networks[1]"
    assert "did you mean 10.1.0.0/16?" in problem.message


# --- environment substitution -------------------------------------------------------------


def test_environment_substitution(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sip:\n  domains: ['${DOMAIN}']\n  listen: ['udp:127.0.0.1:${PORT:-5060}']\n"
        "  max_message_size: ${SIZE}\n"
        "admin:\n  token: ${TOKEN:-}\n"
        "auth:\n  realm: '${SIZE}'\n"
        "storage:\n  redis:\n    key_prefix: 'p$${NOT_A_VAR}'\n",
    )
    config = load_config(path, env={"DOMAIN": "Example.ORG", "SIZE": "4096"})
    assert config.sip.domains == ["example.org"]
    assert config.sip.listen[0].port == 5060
    assert config.sip.max_message_size == 4096
    assert config.admin.token is None  # plain `${VAR:-}` resolves to null
    assert config.auth.realm == "4096"  # quoted: stays a string
    assert config.storage.redis.key_prefix == "p${NOT_A_VAR}"


def test_unset_variable_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "storage:\n  sqlite:\n    path: ${DATA_DIR}/x.db\n")
    (problem,) = problems_of(path)
    assert problem == Problem("storage.sqlite.path", 6, "environment variable DATA_DIR is not set")


# --- referenced files ---------------------------------------------------------------------


def test_missing_file_names_key_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "auth:\n  enabled: true\n  users_file: users.yaml\n")
    (problem,) = problems_of(path)
    assert problem == Problem("auth.users_file", 6, f"file not found: {tmp_path / 'users.yaml'}")


def test_relative_paths_resolve_against_config_directory(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    key = tmp_path / "keys" / "AuthKey.p8"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    sub = tmp_path / "etc"
    sub.mkdir()
    path = write(
        sub,
        MINIMAL + "push:\n  apns:\n    - team_id: ABCD123456\n      bundle_id: org.example.a\n"
        "      key_file: ../keys/AuthKey.p8\n      key_id: KEY1234567\n",
    )
    config = load_config(path, env={})
    assert config.push.apns[0].key_file == key
    assert config.warnings == ()


def test_world_readable_private_key_is_a_warning(tmp_path: Path) -> None:
    key = tmp_path / "tls.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o644)
    (tmp_path / "tls.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    path = write(
        tmp_path,
        "sip:\n  domains: [example.org]\n  listen: ['tls:127.0.0.1:5061']\n"
        "  tls: {cert_file: tls.crt, key_file: tls.key}\n",
    )
    config = load_config(path, env={})
    (warning,) = [w for w in config.warnings if w.path.startswith("sip")]
    assert (warning.path, warning.line) == ("sip.tls.key_file", 4)
    assert "every user can read it" in warning.message
    key.chmod(0o600)
    assert all(w.path == "push" for w in load_config(path, env={}).warnings)


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "auth: {users_file: .}\n")
    (problem,) = problems_of(path)
    assert problem.path == "auth.users_file" and "not a regular file" in problem.message


# --- sipushd check-config -----------------------------------------------------------------


def run_check(path: Path) -> int:
    return config_module.run(argparse.Namespace(config=path, no_file_checks=False))


def test_check_config_ok_prints_summary(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_check(REPO / "config" / "sipushd.yaml") == 0
    out = capsys.readouterr().out
    assert "listeners: udp:127.0.0.1:5060, tcp:127.0.0.1:5060" in out
    assert "domains: example.org" in out
    assert "storage: sqlite" in out and "push (always): mock" in out
    assert "admin: http://127.0.0.1:9060" in out


def test_check_config_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL + "auth: {enabled: maybe}\n")
    assert run_check(path) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "auth.enabled (line 4): " in captured.err


MISSING_COMMANDS = [m for m, _ in COMMANDS.values() if importlib.util.find_spec(m) is None]


@pytest.mark.skipif(
    bool(MISSING_COMMANDS),
    reason=f"`python -m sipushd` imports every command; missing: {MISSING_COMMANDS}",
)
@pytest.mark.parametrize(("name", "status"), [("good", 0), ("bad", 1)])
def test_check_config_subprocess(tmp_path: Path, name: str, status: int) -> None:
    text = MINIMAL if name == "good" else MINIMAL + "sip2: {}\n"
    path = write(tmp_path, text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIPUSHD_")}
    result = subprocess.run(
        [sys.executable, "-m", "sipushd", "check-config", "--config", str(path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == status, result.stderr
    if status:
        assert "sip2 (line 4): unknown key 'sip2'" in result.stderr
    else:
        assert "domains: example.org" in result.stdout
