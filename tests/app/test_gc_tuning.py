"""`sipushd run` makes full garbage collections rare (see `sipushd.app.tune_gc`)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from sipushd.app import tune_gc


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


@pytest.mark.usefixtures("restore_gc")
def test_full_collections_become_rare_and_startup_objects_are_frozen() -> None:
    young, middle, _ = gc.get_threshold()
    tune_gc(full_every=500)
    assert gc.get_threshold() == (young, middle, 500)
    assert gc.get_freeze_count() > 0
