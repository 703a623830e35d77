"""The users file (HA1 hashes, never passwords) and the `sipushd passwd` command.

The file is YAML::

    # sipushd users file: HA1 = H(username:realm:password), never passwords.
    realm: example.org
    users:
      alice:
        ha1_md5: 939e7578ed9e3c518a452acee763bce9        # MD5("alice:example.org:secret")
        ha1_sha256: 8b0d...64 hex digits...              # SHA-256("alice:example.org:secret")

Rules:
- `realm` is required and must equal `auth.realm`: every HA1 includes the
  realm (RFC 7616 §3.4.2), so a file made for another realm cannot work.
- Every user has both `ha1_md5` (32 hex digits) and `ha1_sha256` (64 hex
  digits): the registrar offers SHA-256 first and MD5 for older phones
  (RFC 8760 §2.4), and a phone may answer either.
- Unknown keys, duplicate keys and bad values are errors naming the file,
  the key and the line; every problem is reported at once.
- `sipushd passwd` writes the file atomically (temporary file + rename) with
  mode 0600, keeping the owner of an existing file, and creates it if missing.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from sipushd.core.auth import UserRecord

__all__ = [
    "UsersFile",
    "UsersFileError",
    "add_arguments",
    "load_users",
    "read_users_file",
    "run",
    "set_user",
]

_HEX = {"ha1_md5": re.compile(r"[0-9a-fA-F]{32}"), "ha1_sha256": re.compile(r"[0-9a-fA-F]{64}")}
_BAD_NAME = re.compile(r"[\x00-\x1f\x7f]|^\s|\s$")
_HEADER = "# sipushd users file: HA1 = H(username:realm:password), never passwords.\n"


class UsersFileError(ValueError):
    """The users file cannot be used; `problems` lists every reason."""

    def __init__(self, path: str | os.PathLike[str], problems: list[str]) -> None:
        self.path = str(path)
        self.problems = problems
        super().__init__("\n".join(f"{self.path}: {p}" for p in problems))


@dataclass(frozen=True)
class UsersFile:
    """The parsed file: its realm and the users, by name."""

    realm: str
    users: dict[str, UserRecord]


def _where(node: yaml.Node) -> str:
    return f"line {node.start_mark.line + 1}"


def _pairs(node: yaml.MappingNode, what: str, problems: list[str]) -> list[tuple[str, yaml.Node]]:
    """The (key, value node) pairs of a mapping with scalar keys, flagging duplicates."""
    pairs: list[tuple[str, yaml.Node]] = []
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            problems.append(f"{what} ({_where(key_node)}): keys must be plain strings")
            continue
        key = str(key_node.value)
        if key in seen:
            problems.append(f"{what}.{key} ({_where(key_node)}): duplicate key")
            continue
        seen.add(key)
        pairs.append((key, value_node))
    return pairs


def _scalar(node: yaml.Node, what: str, problems: list[str]) -> str | None:
    if not isinstance(node, yaml.ScalarNode) or node.tag == "tag:yaml.org,2002:null":
        problems.append(f"{what} ({_where(node)}): expected a string")
        return None
    return str(node.value)


def _user(name: str, node: yaml.Node, problems: list[str]) -> UserRecord | None:
    what = f"users.{name}"
    if _BAD_NAME.search(name) or not name:
        problems.append(f"{what} ({_where(node)}): invalid user name")
    if not isinstance(node, yaml.MappingNode):
        problems.append(f"{what} ({_where(node)}): expected ha1_md5 and ha1_sha256")
        return None
    values: dict[str, str] = {}
    reported: set[str] = set()
    for key, value_node in _pairs(node, what, problems):
        pattern = _HEX.get(key)
        if pattern is None:
            problems.append(f"{what}.{key} ({_where(value_node)}): unknown key")
            continue
        value = _scalar(value_node, f"{what}.{key}", problems)
        if value is None or not pattern.fullmatch(value):
            reported.add(key)
            if value is not None:
                digits = 32 if key == "ha1_md5" else 64
                problems.append(
                    f"{what}.{key} ({_where(value_node)}): expected {digits} hex digits"
                )
        else:
            values[key] = value.lower()
    for key in sorted(_HEX.keys() - values.keys() - reported):
        problems.append(f"{what} ({_where(node)}): missing {key}")
    if len(values) != len(_HEX):
        return None
    return UserRecord(ha1_md5=values["ha1_md5"], ha1_sha256=values["ha1_sha256"])


def _parse(root: yaml.Node | None, problems: list[str]) -> UsersFile:
    realm: str | None = None
    users: dict[str, UserRecord] = {}
    if not isinstance(root, yaml.MappingNode):
        problems.append("expected a mapping with realm and users")
        return UsersFile("", users)
    for key, node in _pairs(root, "", problems):
        if key == "realm":
            realm = _scalar(node, "realm", problems)
        elif key == "users":
            if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
                continue
            if not isinstance(node, yaml.MappingNode):
                problems.append(f"users ({_where(node)}): expected a mapping of user names")
                continue
            for name, user_node in _pairs(node, "users", problems):
                record = _user(name, user_node, problems)
                if record is not None:
                    users[name] = record
        else:
            problems.append(f"{key} ({_where(node)}): unknown key (expected realm, users)")
    if realm is None and not any(p.startswith("realm ") for p in problems):
        problems.append("missing realm")
    elif realm is not None and not realm.strip():
        problems.append("realm: must not be empty")
    return UsersFile(realm or "", users)


def read_users_file(path: str | os.PathLike[str]) -> UsersFile:
    """Read and check a users file; UsersFileError lists every problem."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsersFileError(path, [f"cannot read: {exc}"]) from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise UsersFileError(path, [f"{where}invalid YAML: {problem}"]) from None
    problems: list[str] = []
    parsed = _parse(root, problems)
    if problems:
        raise UsersFileError(path, problems)
    return parsed


def load_users(path: str | os.PathLike[str], realm: str) -> dict[str, UserRecord]:
    """The users of `path` by name, checking the file was made for `realm`."""
    parsed = read_users_file(path)
    if parsed.realm != realm:
        raise UsersFileError(
            path,
            [f"realm: the file is for realm {parsed.realm!r}, not {realm!r} (HA1 includes it)"],
        )
    return parsed.users


def _render(realm: str, users: dict[str, UserRecord]) -> str:
    data = {
        "realm": realm,
        "users": {
            name: {"ha1_md5": rec.ha1_md5, "ha1_sha256": rec.ha1_sha256}
            for name, rec in sorted(users.items())
        },
    }
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)
    return _HEADER + body


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text`: temporary file in the same directory, fsync, rename."""
    old = path.stat() if path.exists() else None
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fchmod(out.fileno(), 0o600)
            if old is not None:
                # Keep the owner so a daemon running as another user can still read it.
                with contextlib.suppress(PermissionError):
                    os.fchown(out.fileno(), old.st_uid, old.st_gid)
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def set_user(path: str | os.PathLike[str], realm: str, username: str, password: str) -> bool:
    """Add or change a user's HA1s in `path` (created if missing); True if added."""
    if not username or _BAD_NAME.search(username):
        raise ValueError(f"invalid user name {username!r}")
    if not password:
        raise ValueError("the password must not be empty")
    if not realm.strip():
        raise ValueError("the realm must not be empty")
    target = Path(os.path.realpath(path))  # write through a symlink, do not replace it
    users: dict[str, UserRecord] = {}
    if target.exists():
        users = load_users(target, realm)
    added = username not in users
    users[username] = UserRecord.from_password(username, realm, password)
    _write_atomic(target, _render(realm, users))
    return added


# --- `sipushd passwd` ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of `sipushd passwd`."""
    parser.add_argument("--users-file", required=True, type=Path, metavar="FILE")
    parser.add_argument("--realm", help="realm of a new file (default: the existing file's realm)")
    parser.add_argument("username", metavar="USER")


def _read_password(stdin: TextIO) -> str:
    """Twice with getpass on a terminal; else one line from standard input."""
    if stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ValueError("the passwords do not match")
        return first
    return stdin.readline().removesuffix("\n").removesuffix("\r")


def run(args: argparse.Namespace) -> int:
    """Add or change one user; 0 on success, 1 with a message on stderr otherwise."""
    path: Path = args.users_file
    try:
        realm: str | None = args.realm
        if realm is None:
            if not path.exists():
                raise ValueError(f"{path} does not exist: give --realm to create it")
            realm = read_users_file(path).realm
        password = _read_password(sys.stdin)
        added = set_user(path, realm, args.username, password)
    except (ValueError, OSError) as exc:
        print(f"sipushd passwd: {exc}", file=sys.stderr)
        return 1
    verb = "added" if added else "changed"
    print(f"{verb} user {args.username} (realm {realm}) in {path}")
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(prog="sipushd passwd")
    add_arguments(_parser)
    sys.exit(run(_parser.parse_args()))
