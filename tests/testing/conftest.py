"""Fixtures for the mock push service tests: a running service, keys, HTTP/2 clients."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sipushd.testing.mock_pns import MockPushService


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One CA for the session: the service reuses the certificates it finds."""
    return tmp_path_factory.mktemp("mock-pns-state")


@pytest_asyncio.fixture
async def service(state_dir: Path) -> AsyncIterator[MockPushService]:
    async with MockPushService(state_dir) as svc:
        yield svc


@pytest_asyncio.fixture
async def client(service: MockPushService) -> AsyncIterator[httpx.AsyncClient]:
    context = ssl.create_default_context(cafile=str(service.ca_file))
    async with httpx.AsyncClient(
        http2=True, verify=context, trust_env=False, base_url=service.base_url
    ) as c:
        yield c


@pytest.fixture
def apns_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A team signing key and its public key written as PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    public = tmp_path / "apns-public.pem"
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key, public
