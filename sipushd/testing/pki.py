"""Test key material: a local CA with a loopback server certificate, APNs and FCM credentials.

Rules: files are written atomically with private keys mode 0600; an existing CA and
server certificate in the state directory are reused while they are valid, so clients
can keep trusting the same `ca.pem` across restarts. Everything here is for tests and
local runs only; nothing is meant to protect real traffic.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
SERVER_CERT_FILE = "server.pem"
SERVER_KEY_FILE = "server-key.pem"
SERVER_NAMES = ("localhost", "127.0.0.1", "::1")
_SERVER_DAYS = 365
_CA_DAYS = 3650
# Renew a server certificate this close to its expiry rather than serve an expired one.
_RENEW_MARGIN = datetime.timedelta(days=1)


@dataclass(frozen=True, slots=True)
class ServerCredentials:
    """Paths of the CA certificate and of the server certificate chain and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def ensure_server_credentials(state_dir: Path) -> ServerCredentials:
    """Create (or reuse) the CA and a loopback server certificate in `state_dir`."""
    state_dir.mkdir(parents=True, exist_ok=True)
    creds = ServerCredentials(
        state_dir / CA_FILE, state_dir / SERVER_CERT_FILE, state_dir / SERVER_KEY_FILE
    )
    now = datetime.datetime.now(datetime.UTC)
    with _locked(state_dir / ".pki.lock"):
        ca_key_path = state_dir / CA_KEY_FILE
        if _valid(creds.ca_file, now) and ca_key_path.exists():
            ca_cert = x509.load_pem_x509_certificate(creds.ca_file.read_bytes())
            ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
            if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{ca_key_path}: expected an EC private key")
        else:
            ca_key = ec.generate_private_key(ec.SECP256R1())
            ca_cert = _make_ca(ca_key, now)
            _write(ca_key_path, _private_pem(ca_key), private=True)
            _write(creds.ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
            creds.cert_file.unlink(missing_ok=True)
        if not (_valid(creds.cert_file, now, issuer=ca_cert) and creds.key_file.exists()):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _make_server_cert(key, ca_key, ca_cert, now)
            _write(creds.key_file, _private_pem(key), private=True)
            _write(creds.cert_file, cert.public_bytes(serialization.Encoding.PEM))
    return creds


def write_test_apns_key(path: Path) -> Path:
    """Write a fresh P-256 APNs signing key (.p8, PKCS#8 PEM) to `path` and return it."""
    key = ec.generate_private_key(ec.SECP256R1())
    _write(path, _private_pem(key), private=True)
    return path


def write_test_service_account(path: Path, token_uri: str, project_id: str) -> Path:
    """Write a Google service-account JSON with a fresh RSA key whose token_uri is given."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    email = f"mock-pns@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": secrets.token_hex(20),
        "private_key": _private_pem(key).decode("ascii"),
        "client_email": email,
        "client_id": str(secrets.randbelow(10**20)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": f"https://www.googleapis.com/robot/v1/metadata/x509/{email}",
        "universe_domain": "googleapis.com",
    }
    _write(path, (json.dumps(info, indent=2) + "\n").encode(), private=True)
    return path


def _make_ca(key: ec.EllipticCurvePrivateKey, now: datetime.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sipushd mock-pns test CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_server_cert(
    key: ec.EllipticCurvePrivateKey,
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    now: datetime.datetime,
) -> x509.Certificate:
    names: list[x509.GeneralName] = []
    for host in SERVER_NAMES:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _valid(path: Path, now: datetime.datetime, issuer: x509.Certificate | None = None) -> bool:
    """True when `path` holds a certificate valid for a while yet (and issued by `issuer`)."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    if cert.not_valid_after_utc - _RENEW_MARGIN < now:
        return False
    if issuer is None:
        return True
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _private_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    """Replace `path` atomically so a concurrent reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise certificate creation between processes sharing a state directory."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
