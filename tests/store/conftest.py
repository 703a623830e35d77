"""Store test fixtures: the shared private redis-server stops when the session ends."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.store.redis_server import stop_shared


@pytest.fixture(scope="session", autouse=True)
def _stop_shared_redis() -> Iterator[None]:
    """Nothing starts here; a Redis backend starts the server on first use."""
    yield
    stop_shared()
