"""Test key material: the CA and server certificate are reused, keys load as APNs keys."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from sipushd.testing.pki import ensure_server_credentials, write_test_apns_key
from sipushd.testing.pns_protocol import load_apns_key


def test_certificates_are_created_once_and_reused(tmp_path: Path) -> None:
    first = ensure_server_credentials(tmp_path)
    ca_pem, cert_pem = first.ca_file.read_bytes(), first.cert_file.read_bytes()
    again = ensure_server_credentials(tmp_path)
    assert (again.ca_file.read_bytes(), again.cert_file.read_bytes()) == (ca_pem, cert_pem)
    assert stat.S_IMODE(first.key_file.stat().st_mode) == 0o600

    ca = x509.load_pem_x509_certificate(ca_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    cert.verify_directly_issued_by(ca)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_a_missing_server_certificate_is_reissued_by_the_same_ca(tmp_path: Path) -> None:
    first = ensure_server_credentials(tmp_path)
    ca_pem = first.ca_file.read_bytes()
    first.cert_file.unlink()
    again = ensure_server_credentials(tmp_path)
    assert again.ca_file.read_bytes() == ca_pem
    cert = x509.load_pem_x509_certificate(again.cert_file.read_bytes())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca_pem))


def test_apns_keys_load_from_p8_and_refuse_other_curves(tmp_path: Path) -> None:
    p8 = write_test_apns_key(tmp_path / "AuthKey_TEST.p8")
    assert load_apns_key(p8).curve.name == "secp256r1"
    with pytest.raises(ValueError, match="P-256"):
        load_apns_key(_p384_public_key(tmp_path / "p384.pem"))
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(ValueError, match=r"junk\.pem"):
        load_apns_key(tmp_path / "junk.pem")


def _p384_public_key(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP384R1())
    path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return path
