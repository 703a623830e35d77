"""Build hook: the sans-IO SIP stack and the pure core are compiled with mypyc.

`sipushd/sip` and `sipushd/core` import only the standard library and each other,
and pass `mypy --strict`; mypyc turns them into C extensions, which roughly
halves the interpreter work per SIP message. The Python sources stay the
reference: set SIPUSHD_PURE=1 to install without compiling.

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
COMPILED_PACKAGES = ("sipushd/sip", "sipushd/core")


def compiled_sources() -> list[str]:
    """The modules compiled by mypyc, relative to the project root."""
    return sorted(
        path.relative_to(ROOT).as_posix()
        for package in COMPILED_PACKAGES
        for path in (ROOT / package).glob("*.py")
    )


if os.environ.get("SIPUSHD_PURE") == "1":
    setup()
else:
    from mypyc.build import mypycify

    os.chdir(ROOT)  # mypyc resolves module names from the working directory
    setup(ext_modules=mypycify(compiled_sources(), opt_level="3", strip_asserts=False))
