"""Which modules run compiled, and whether a compiled module is older than its source.

The build (setup.py) compiles `sipushd/sip`, `sipushd/core` and the runtime modules
every SIP request passes through with mypyc into extension files next to the
sources, and Python imports an extension before a `.py` of the same name. After
an edit the old extension would keep running, so the daemon warns at startup and
the test suite refuses to start while any compiled module is stale (`make venv`
rebuilds).
"""

from __future__ import annotations

from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

__all__ = [
    "COMPILED_MODULES",
    "COMPILED_PACKAGES",
    "compiled_modules",
    "compiled_names",
    "compiled_sources",
    "stale_modules",
]

COMPILED_PACKAGES = ("sipushd.sip", "sipushd.core")
# The glue between the transport and the core: the engine, the server core and the
# registrar service. They import little besides asyncio, structlog and the metrics, so the
# build needs only those two (pyproject's build requirements) to type-check them.
COMPILED_MODULES = (
    "sipushd.runtime.engine",
    "sipushd.runtime.registrar",
    "sipushd.runtime.server",
)
_ROOT = Path(__file__).resolve().parent.parent


def compiled_sources() -> list[Path]:
    """The source files the build compiles (setup.py reads this list)."""
    return [source for _, source in _sources()]


def compiled_names() -> list[str]:
    """The modules the build compiles, by name."""
    return [name for name, _ in _sources()]


def _sources() -> list[tuple[str, Path]]:
    found = []
    for package in COMPILED_PACKAGES:
        for source in sorted((_ROOT / package.replace(".", "/")).glob("*.py")):
            name = package if source.stem == "__init__" else f"{package}.{source.stem}"
            found.append((name, source))
    for name in COMPILED_MODULES:
        found.append((name, _ROOT / (name.replace(".", "/") + ".py")))
    return found


def _extension(source: Path) -> Path | None:
    for suffix in EXTENSION_SUFFIXES:
        candidate = source.with_name(source.stem + suffix)
        if candidate.exists():
            return candidate
    return None


def compiled_modules() -> list[str]:
    """Modules of the compiled packages that have an extension file next to their source."""
    return [name for name, source in _sources() if _extension(source) is not None]


def stale_modules() -> list[str]:
    """Modules whose source is newer than their extension, or missing from a compiled build.

    Empty for a pure-Python install (no extension at all) and for an up-to-date build.
    """
    sources = _sources()
    built = {name: _extension(source) for name, source in sources}
    if not any(built.values()):
        return []
    stale = []
    for name, source in sources:
        extension = built[name]
        if extension is None or source.stat().st_mtime > extension.stat().st_mtime:
            stale.append(name)
    return stale
