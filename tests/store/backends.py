"""Backend tables for the store contract suites: how to open each backend, as pytest params."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Generic, TypeVar

import pytest

S = TypeVar("S")


def redis_prefix(place: Path) -> str:
    """A key prefix of its own for each test directory on the one shared redis-server."""
    return "t" + hashlib.sha1(str(place).encode()).hexdigest()[:12] + ":"


@dataclasses.dataclass(frozen=True)
class Backend(Generic[S]):
    """Opens one backend's store in a per-test directory; `persistent` when a reopen sees it."""

    open: Callable[[Path], Awaitable[S]]
    persistent: bool
    marks: tuple[pytest.MarkDecorator, ...] = ()


def backend_params(
    backends: Mapping[str, Backend[Any]], *, persistent_only: bool = False
) -> list[Any]:
    """One pytest param per backend name, carrying its marks (e.g. pytest.mark.redis)."""
    return [
        pytest.param(name, marks=backend.marks)
        for name, backend in backends.items()
        if backend.persistent or not persistent_only
    ]
