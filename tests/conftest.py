"""Suite-wide checks before any test runs."""

from __future__ import annotations

import pytest

from sipushd import native


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test compiled modules that are older than their sources."""
    if stale := native.stale_modules():
        pytest.exit(
            "compiled modules are older than their sources (run `make venv`; "
            f"SIPUSHD_PURE=1 make venv for plain Python): {', '.join(stale)}",
            returncode=4,
        )
