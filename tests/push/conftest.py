"""Fixtures for push tests: an APNs signing key made here, the mock push service, providers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from sipushd.push.apns import ApnsProvider
from sipushd.push.fcm import FcmProvider
from sipushd.push.settings import FcmAppSettings
from sipushd.testing.mock_pns import MockPushService, write_test_service_account
from tests.push.helpers import KEY_ID, PROJECT, apns_app, write_p256_key


@pytest.fixture(scope="session")
def pns_state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the whole session (the mock reuses what it finds)."""
    return tmp_path_factory.mktemp("pns-state")


@pytest.fixture
def apns_key(tmp_path: Path) -> tuple[Path, Path]:
    return write_p256_key(tmp_path / f"AuthKey_{KEY_ID}.p8")


@pytest_asyncio.fixture
async def pns(pns_state: Path, apns_key: tuple[Path, Path]) -> AsyncIterator[MockPushService]:
    """The mock push service, verifying provider tokens against the test's public key."""
    service = MockPushService(pns_state, apns_public_keys=[apns_key[1]])
    await service.start()
    yield service
    await service.stop()


@pytest_asyncio.fixture
async def apns(pns: MockPushService, apns_key: tuple[Path, Path]) -> AsyncIterator[ApnsProvider]:
    provider = ApnsProvider([apns_app(pns, apns_key[0])])
    await provider.start()
    yield provider
    await provider.stop()


@pytest_asyncio.fixture
async def fcm(pns: MockPushService, tmp_path: Path) -> AsyncIterator[FcmProvider]:
    account = write_test_service_account(tmp_path / "sa.json", pns.token_uri, PROJECT)
    settings = FcmAppSettings(
        project_id=PROJECT,
        service_account_file=account,
        endpoint=pns.base_url,
        ca_file=pns.ca_file,
    )
    provider = FcmProvider([settings])
    await provider.start()
    yield provider
    await provider.stop()
