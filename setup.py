"""Build hook: the SIP stack, the pure core and the runtime's hot glue are compiled with mypyc.

`sipushd/sip` and `sipushd/core` import only the standard library and each other;
the runtime's engine, server core and registrar service add asyncio, structlog and
the metrics. All pass `mypy --strict`; mypyc turns them into C extensions, which
roughly halves the interpreter work per SIP message. `sipushd.native` lists them.
The Python sources stay the reference: set SIPUSHD_PURE=1 to install without compiling.

Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from sipushd.native import compiled_sources  # noqa: E402  (standard library only)

if os.environ.get("SIPUSHD_PURE") == "1":
    setup()
else:
    from mypyc.build import mypycify

    os.chdir(ROOT)  # mypyc resolves module names from the working directory
    sources = [path.relative_to(ROOT).as_posix() for path in compiled_sources()]
    setup(ext_modules=mypycify(sources, opt_level="3", strip_asserts=False))
