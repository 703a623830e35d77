"""The compiled build: what runs compiled, stale extensions, and code mypyc mistranslates."""

from __future__ import annotations

import ast
import importlib
import os
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

import pytest

from sipushd import native

ROOT = Path(__file__).resolve().parents[2]


def _sources() -> list[Path]:
    return native.compiled_sources()


def test_a_pure_install_has_no_stale_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "sipushd" / "sip"
    package.mkdir(parents=True)
    (package / "uri.py").write_text("")
    monkeypatch.setattr(native, "_ROOT", tmp_path)
    monkeypatch.setattr(native, "COMPILED_PACKAGES", ("sipushd.sip",))
    monkeypatch.setattr(native, "COMPILED_MODULES", ())
    assert native.compiled_modules() == []
    assert native.stale_modules() == []


def test_an_edited_or_new_source_makes_its_module_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "sipushd" / "sip"
    package.mkdir(parents=True)
    for name in ("__init__", "uri", "parser"):
        (package / f"{name}.py").write_text("")
    suffix = EXTENSION_SUFFIXES[0]
    for name in ("__init__", "uri", "parser"):
        (package / f"{name}{suffix}").write_bytes(b"")
    old = 1_700_000_000
    for path in package.glob("*.py"):
        os.utime(path, (old, old))
    monkeypatch.setattr(native, "_ROOT", tmp_path)
    monkeypatch.setattr(native, "COMPILED_PACKAGES", ("sipushd.sip",))
    monkeypatch.setattr(native, "COMPILED_MODULES", ())
    assert native.compiled_modules() == ["sipushd.sip", "sipushd.sip.parser", "sipushd.sip.uri"]
    assert native.stale_modules() == []

    os.utime(package / "uri.py", None)  # edited after the build
    (package / "route.py").write_text("")  # added after the build
    assert native.stale_modules() == ["sipushd.sip.route", "sipushd.sip.uri"]


@pytest.mark.skipif(os.environ.get("SIPUSHD_PURE") == "1", reason="pure-Python install")
def test_the_hot_path_runs_compiled() -> None:
    # The suite tests what ships: the SIP stack, the core and the runtime glue as built
    # by mypyc.
    names = native.compiled_names()
    assert "sipushd.runtime.engine" in names and "sipushd.sip.parser" in names
    for name in names:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(tuple(EXTENSION_SUFFIXES)), module.__file__


def test_this_checkout_is_not_stale() -> None:
    # The session start refuses stale builds; this pins the check to this checkout too.
    assert native.stale_modules() == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_function_reuses_an_except_name_for_another_type(path: Path) -> None:
    # mypyc gives a variable one type per function: `except A as exc` followed by
    # `except B as exc` makes the second handler raise TypeError when compiled.
    tree = ast.parse(path.read_text())
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        types: dict[str, set[str]] = {}
        for node in ast.walk(function):
            if isinstance(node, ast.ExceptHandler) and node.name and node.type is not None:
                types.setdefault(node.name, set()).add(ast.unparse(node.type))
        reused = {name: sorted(kinds) for name, kinds in types.items() if len(kinds) > 1}
        assert not reused, f"{path.name}:{function.name} reuses {reused}"
