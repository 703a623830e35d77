"""An APNs-like TLS server that requires a client certificate, for certificate-auth tests."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipushd.testing.h2server import H2Server, Request, Response, server_ssl_context
from sipushd.testing.pki import ensure_server_credentials


class ClientCertServer:
    """Answers every request 200 with its apns-id, after a TLS handshake with a client cert."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.seen: list[dict[str, str]] = []
        self._server = H2Server(self._handle, context)

    async def _handle(self, request: Request) -> Response:
        self.seen.append(dict(request.headers))
        return Response(200, (("apns-id", request.headers.get("apns-id", "")),))

    @property
    def port(self) -> int:
        return self._server.port

    async def start(self) -> None:
        await self._server.start("127.0.0.1", 0)

    async def stop(self) -> None:
        await self._server.stop()


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_client_credentials(directory: Path) -> tuple[Path, Path]:
    """A client CA (PEM) and an APNs-style client certificate + key (one PEM); their paths."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test client CA"))
        .issuer_name(_name("test client CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("Apple Push Services: org.example.phone"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "client-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "apns-client.pem"
    cert_file.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_file, cert_file


async def make_client_cert_server(
    directory: Path, state_dir: Path
) -> tuple[ClientCertServer, Path]:
    """Start the server (server cert from the mock's PKI); return it and the client PEM."""
    client_ca, client_pem = write_client_credentials(directory)
    creds = ensure_server_credentials(state_dir)
    context = server_ssl_context(creds.cert_file, creds.key_file)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(client_ca))
    server = ClientCertServer(context)
    await server.start()
    return server, client_pem
