"""Load the YAML config file into the typed `Config`, or say everything wrong with it.

`load_config(path)` reads the file with line numbers kept (`sipushd.yamlpos`),
substitutes `${VAR}` / `${VAR:-default}`, validates it against the schema in
`sipushd.config_schema`, resolves relative paths against the file's directory
and checks that every referenced file exists and is readable. All problems
are gathered first and raised together as one `ConfigError`, each naming its
key path and line. Things that work but look wrong (a world-readable private
key, an open admin port) become `Config.warnings` for the caller to log.
Raw dicts never leave this module. Also the `sipushd check-config` command.
"""

from __future__ import annotations

import argparse
import difflib
import ipaddress
import os
import stat
import sys
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from sipushd.config_schema import (
    AdminConfig,
    ApnsApp,
    AuthConfig,
    Config,
    FcmApp,
    FileRef,
    ListenSpec,
    LoggingConfig,
    PushConfig,
    RegistrarConfig,
    RoutingConfig,
    SipConfig,
    StorageConfig,
    TlsConfig,
)
from sipushd.yamlpos import Loc, LocatedDocument, Problem, YamlSyntaxError, load_yaml

__all__ = [
    "AdminConfig",
    "ApnsApp",
    "AuthConfig",
    "Config",
    "ConfigError",
    "FcmApp",
    "ListenSpec",
    "LoggingConfig",
    "Problem",
    "PushConfig",
    "RegistrarConfig",
    "RoutingConfig",
    "SipConfig",
    "StorageConfig",
    "TlsConfig",
    "add_arguments",
    "load_config",
    "run",
]

DEFAULT_CONFIG_PATH = Path("/etc/sipushd/sipushd.yaml")

_SECRET_KEYS = ("token", "secret")
_OWN_ERRORS = ("config_rule", "config_value", "missing", "extra_forbidden")


class ConfigError(Exception):
    """The config file is unusable; `.problems` lists every (path, line, message)."""

    def __init__(self, problems: Sequence[Problem], source_path: Path | None = None) -> None:
        self.problems: list[Problem] = list(problems)
        self.source_path = source_path
        super().__init__("\n".join(str(problem) for problem in self.problems))


def load_config(
    path: Path, *, check_files: bool = True, env: Mapping[str, str] | None = None
) -> Config:
    """Load and validate the config at `path`; raise ConfigError listing every problem."""
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError([Problem("", None, f"cannot read {path}: {reason}")], path) from None
    try:
        doc = load_yaml(text, os.environ if env is None else env)
    except YamlSyntaxError as exc:
        raise ConfigError([exc.problem], path) from None
    if doc.data is None:
        doc.data = {}
    if not isinstance(doc.data, dict):
        message = "the file must be a mapping of sections (sip:, auth:, push:, ...)"
        raise ConfigError([*doc.problems, Problem("", doc.line_of(()), message)], path)

    problems = list(doc.problems)
    config: Config | None = None
    try:
        config = Config.model_validate(doc.data, context={"base_dir": path.parent})
    except ValidationError as exc:
        blamed = {problem.path for problem in problems}
        problems += [p for p in _convert_errors(exc, doc) if p.path not in blamed]
    warnings: list[Problem] = []
    if check_files:
        blamed = {problem.path for problem in problems}
        for problem, is_error in _check_files(doc, path.parent):
            if problem.path in blamed:
                continue
            (problems if is_error else warnings).append(problem)
    if problems or config is None:
        problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(problems, path)
    warnings += _advice(config, doc)
    config._source_path = path
    config._warnings = tuple(warnings)
    return config


# --- pydantic errors -> problems ----------------------------------------------------------


def _convert_errors(exc: ValidationError, doc: LocatedDocument) -> Iterator[Problem]:
    for error in exc.errors():
        loc: Loc = tuple(part for part in error["loc"] if isinstance(part, int) or "[" not in part)
        kind = error["type"]
        if kind == "extra_forbidden":
            message = f"unknown key {loc[-1]!r}" + _suggest(loc)
        elif kind == "missing":
            message = "required key is missing"
        else:
            message = error["msg"].removeprefix("Value error, ")
            if kind not in _OWN_ERRORS and _showable(loc, error.get("input")):
                message += f" (got {error['input']!r})"
        yield doc.problem(loc, message)


def _showable(loc: Loc, value: Any) -> bool:
    if any(isinstance(part, str) and part.endswith(_SECRET_KEYS) for part in loc):
        return False
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 60


def _suggest(loc: Loc) -> str:
    model = _model_at(loc[:-1])
    if model is None or not isinstance(loc[-1], str):
        return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _strip(tp: Any) -> Any:
    """Remove Annotated and Optional wrappers from a type."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            rest = [arg for arg in get_args(tp) if arg is not type(None)]
            if len(rest) != 1:
                return tp
            tp = rest[0]
        else:
            return tp


def _as_model(tp: Any) -> type[BaseModel] | None:
    tp = _strip(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _model_at(loc: Loc) -> type[BaseModel] | None:
    tp: Any = Config
    for part in loc:
        tp = _strip(tp)
        if isinstance(part, int):
            if get_origin(tp) is not list:
                return None
            tp = get_args(tp)[0]
            continue
        model = _as_model(tp)
        if model is None or part not in model.model_fields:
            return None
        tp = model.model_fields[part].annotation
    return _as_model(tp)


# --- referenced files ---------------------------------------------------------------------


def _file_ref(field: FieldInfo) -> FileRef | None:
    for item in field.metadata:
        if isinstance(item, FileRef):
            return item
    pending = [field.annotation]
    while pending:
        tp = pending.pop()
        if get_origin(tp) is Annotated:
            for item in getattr(tp, "__metadata__", ()):
                if isinstance(item, FileRef):
                    return item
        pending.extend(get_args(tp))
    return None


def _file_fields(model: type[BaseModel], data: Any, loc: Loc) -> Iterator[tuple[Loc, str, FileRef]]:
    """Every file-path value in raw `data`, walked along the schema (works on invalid data)."""
    if not isinstance(data, dict):
        return
    for name, field in model.model_fields.items():
        if name not in data:
            continue
        value, ref = data[name], _file_ref(field)
        if ref is not None:
            if isinstance(value, str) and value:
                yield (*loc, name), value, ref
            continue
        tp = _strip(field.annotation)
        item = _as_model(get_args(tp)[0]) if get_origin(tp) is list else None
        if item is not None and isinstance(value, list):
            for index, entry in enumerate(value):
                yield from _file_fields(item, entry, (*loc, name, index))
        elif (sub := _as_model(tp)) is not None:
            yield from _file_fields(sub, value, (*loc, name))


def _check_files(doc: LocatedDocument, base: Path) -> Iterator[tuple[Problem, bool]]:
    """(problem, is_error) for each referenced file that is missing, unreadable or too open."""
    for loc, text, ref in _file_fields(Config, doc.data, ()):
        path = Path(os.path.normpath(base / text))
        error = _file_error(path)
        if error is not None:
            yield doc.problem(loc, error), True
        elif ref.private and path.stat().st_mode & stat.S_IROTH:
            message = f"{path} holds a secret but every user can read it (chmod 600 it)"
            yield doc.problem(loc, message), False


def _file_error(path: Path) -> str | None:
    try:
        info = path.stat()
    except FileNotFoundError:
        return f"file not found: {path}"
    except OSError as exc:
        return f"cannot access {path}: {exc.strerror}"
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file: {path}"
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror}"
    if info.st_size == 0:
        return f"file is empty: {path}"
    return None


def _advice(config: Config, doc: LocatedDocument) -> Iterator[Problem]:
    """Warnings about a valid config that is probably not what the operator meant."""
    if config.admin.token is None and not _is_loopback(config.admin.host):
        yield doc.problem(
            ("admin", "listen"), "the admin API is reachable beyond loopback and has no token"
        )
    push = config.push
    if not (push.apns or push.fcm or push.mock.enabled):
        yield doc.problem(
            ("push",), "no push provider: REGISTERs with push parameters will get 555"
        )
    exposed = [spec for spec in config.sip.listen if not _is_loopback(spec.host)]
    if exposed and not config.auth.enabled:
        yield doc.problem(
            ("auth", "enabled"), f"auth is off but {exposed[0]} is reachable: anyone may register"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- `sipushd check-config` ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `sipushd check-config`."""
    parser.add_argument(
        "-c",
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"config file (default {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--no-file-checks",
        action="store_true",
        help="do not check that referenced files exist (validate on another machine)",
    )


def run(args: argparse.Namespace) -> int:
    """Validate the config file; print a summary (exit 0) or every problem (exit 1)."""
    try:
        config = load_config(args.config, check_files=not args.no_file_checks)
    except ConfigError as exc:
        count = len(exc.problems)
        print(f"{exc.source_path}: {count} problem{'s' * (count != 1)}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  error: {problem}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{config.source_path}: OK")
    for line in summarize(config):
        print(f"  {line}")
    return 0


def summarize(config: Config) -> list[str]:
    """A few human lines describing what the config will do (no secrets)."""
    sip, auth, push, store = config.sip, config.auth, config.push, config.storage
    public = f" (public host {sip.public_host})" if sip.public_host else ""
    if store.backend == "sqlite":
        storage = f"sqlite {store.sqlite.path}"
    else:
        storage = f"redis {store.redis.url.split('@')[-1]}"
    if auth.enabled:
        auth_line = (
            f"on, realm {auth.realm or '(request domain)'}, users {auth.users_file}, "
            f"{len(auth.trusted_networks)} trusted networks, {' '.join(auth.algorithms)}"
        )
    else:
        auth_line = "off"
    apps = [
        f"apns {a.team_id}.{a.bundle_id} ({'token' if a.token_auth else 'certificate'}, "
        f"{a.endpoint})"
        for a in push.apns
    ]
    apps += [f"fcm {f.project_id} ({f.endpoint})" for f in push.fcm]
    if push.mock.enabled:
        apps.append("mock")
    token = "token set" if config.admin.token else "no token"
    return [
        "listeners: " + ", ".join(str(spec) for spec in sip.listen) + public,
        "domains: " + ", ".join(sip.domains),
        f"storage: {storage}",
        f"auth: {auth_line}",
        f"push ({push.mode}): " + (", ".join(apps) if apps else "none"),
        f"admin: http://{config.admin.listen} ({token})",
        f"logging: {config.logging.format} {config.logging.level}",
    ]
