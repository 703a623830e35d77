"""Users file: load, errors with key and line, atomic writes, the passwd command."""

from __future__ import annotations

import argparse
import getpass
import importlib.util
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import sipushd
import sipushd.users as users_module
from sipushd.cli import COMMANDS
from sipushd.core.auth import UserRecord
from sipushd.sip.digest import ha1
from sipushd.users import UsersFileError, load_users, read_users_file, set_user

REALM = "example.org"
MD5 = ha1("alice", REALM, "secret", "MD5")
SHA = ha1("alice", REALM, "secret", "SHA-256")
REPO = Path(sipushd.__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "users.yaml"
    path.write_text(text)
    return path


def problems_of(path: Path, realm: str = REALM) -> str:
    with pytest.raises(UsersFileError) as info:
        load_users(path, realm)
    return str(info.value)


def test_load(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"realm: {REALM}\nusers:\n  alice:\n    ha1_md5: {MD5.upper()}\n    ha1_sha256: {SHA}\n"
        f"  '1234':\n    ha1_md5: {'0' * 32}\n    ha1_sha256: {'1' * 64}\n",
    )
    users = load_users(path, REALM)
    assert users["alice"] == UserRecord.from_password("alice", REALM, "secret")
    assert users["1234"].ha1_md5 == "0" * 32


def test_empty_users_is_fine(tmp_path: Path) -> None:
    assert load_users(write(tmp_path, f"realm: {REALM}\nusers:\n"), REALM) == {}
    assert load_users(write(tmp_path, f"realm: {REALM}\n"), REALM) == {}


def test_realm_must_match(tmp_path: Path) -> None:
    path = write(tmp_path, "realm: other.org\nusers: {}\n")
    assert "other.org" in problems_of(path)


def test_every_problem_is_reported_with_key_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "realm: example.org\n"
        "colour: blue\n"
        "users:\n"
        "  alice:\n"
        "    ha1_md5: xyz\n"
        f"    ha1_sha256: {SHA}\n"
        "  bob:\n"
        f"    ha1_md5: {MD5}\n"
        "    password: plain\n"
        "  alice:\n"
        f"    ha1_md5: {MD5}\n",
    )
    text = problems_of(path)
    assert str(path) in text
    assert "colour (line 2): unknown key" in text
    assert "users.alice.ha1_md5 (line 5): expected 32 hex digits" in text
    assert "users.bob.password (line 9): unknown key" in text
    assert "users.bob (line 8): missing ha1_sha256" in text
    assert "users.alice (line 10): duplicate key" in text


def test_missing_realm_and_bad_shapes(tmp_path: Path) -> None:
    assert "missing realm" in problems_of(write(tmp_path, "users: {}\n"))
    assert "expected a mapping" in problems_of(write(tmp_path, "- a\n- b\n"))
    assert "expected a mapping" in problems_of(write(tmp_path, ""))
    text = problems_of(write(tmp_path, f"realm: {REALM}\nusers: [alice]\n"))
    assert "users (line 2)" in text
    text = problems_of(write(tmp_path, f"realm: {REALM}\nusers:\n  alice: x\n"))
    assert "users.alice (line 3)" in text


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    text = problems_of(write(tmp_path, f"realm: {REALM}\nusers:\n  alice: [\n"))
    assert "invalid YAML" in text and "line " in text


def test_unreadable_file(tmp_path: Path) -> None:
    assert "cannot read" in problems_of(tmp_path / "missing.yaml")


def test_set_user_round_trip_and_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    assert set_user(path, REALM, "alice", "secret") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert set_user(path, REALM, "bob", "pw: with 'quotes'") is True
    assert set_user(path, REALM, "true", "x") is True  # YAML-special name stays a string
    assert set_user(path, REALM, "alice", "new") is False
    users = load_users(path, REALM)
    assert sorted(users) == ["alice", "bob", "true"]
    assert users["alice"] == UserRecord.from_password("alice", REALM, "new")
    assert users["bob"] == UserRecord.from_password("bob", REALM, "pw: with 'quotes'")
    assert "new" not in path.read_text() and "secret" not in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["users.yaml"]  # no temporary left


def test_set_user_resets_a_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    set_user(path, REALM, "alice", "secret")
    path.chmod(0o644)
    set_user(path, REALM, "alice", "secret2")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_set_user_writes_through_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.yaml"
    link = tmp_path / "users.yaml"
    set_user(real, REALM, "alice", "secret")
    link.symlink_to(real)
    set_user(link, REALM, "bob", "pw")
    assert link.is_symlink()
    assert sorted(load_users(real, REALM)) == ["alice", "bob"]


def test_set_user_refuses_other_realm_and_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    set_user(path, REALM, "alice", "secret")
    with pytest.raises(UsersFileError, match="realm"):
        set_user(path, "other.org", "bob", "pw")
    with pytest.raises(ValueError, match="empty"):
        set_user(path, REALM, "bob", "")
    with pytest.raises(ValueError, match="user name"):
        set_user(path, REALM, "bad\nname", "pw")
    assert sorted(load_users(path, REALM)) == ["alice"]


def test_passwd_is_registered_in_the_cli() -> None:
    assert COMMANDS["passwd"][0] == "sipushd.users"


def passwd(
    args: list[str], stdin: str, *, module: str = "sipushd.users"
) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-m", module, *args]
    return subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_passwd_subprocess_creates_and_changes(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    done = passwd(["--users-file", str(path), "--realm", REALM, "alice"], "secret\n")
    assert done.returncode == 0, done.stderr
    assert "added user alice" in done.stdout
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # realm taken from the existing file
    done = passwd(["--users-file", str(path), "alice"], "changed\r\n")
    assert done.returncode == 0, done.stderr
    assert "changed user alice" in done.stdout
    assert load_users(path, REALM)["alice"] == UserRecord.from_password("alice", REALM, "changed")


def test_passwd_subprocess_errors(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    done = passwd(["--users-file", str(path), "alice"], "secret\n")
    assert done.returncode == 1 and "--realm" in done.stderr
    done = passwd(["--users-file", str(path), "--realm", REALM, "alice"], "")
    assert done.returncode == 1 and "empty" in done.stderr
    assert not path.exists()


@pytest.mark.skipif(
    importlib.util.find_spec("sipushd.app") is None, reason="sipushd.app not present yet"
)
def test_passwd_through_the_sipushd_command(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    args = ["passwd", "--users-file", str(path), "--realm", REALM, "bob"]
    done = passwd(args, "pw\n", module="sipushd")
    assert done.returncode == 0, done.stderr
    assert read_users_file(path).users["bob"] == UserRecord.from_password("bob", REALM, "pw")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_passwd_asks_twice_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.yaml"
    answers = iter(["pw1", "pw1", "pw2", "other"])
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": next(answers))
    monkeypatch.setattr(sys, "stdin", FakeTty())
    args = argparse.Namespace(users_file=path, realm=REALM, username="alice")
    assert users_module.run(args) == 0
    assert load_users(path, REALM)["alice"] == UserRecord.from_password("alice", REALM, "pw1")
    assert users_module.run(args) == 1  # the two answers differ: nothing changes
    assert load_users(path, REALM)["alice"] == UserRecord.from_password("alice", REALM, "pw1")
