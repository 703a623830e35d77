"""Test helpers for the transport: a recording upper layer, SIP bytes, peers, a test PKI."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sipushd.sip import Endpoint, Request, Response
from sipushd.transport import TransportManager

WAIT = 5.0  # safety net so a broken test fails instead of hanging; never asserted on


def ipv6_available() -> bool:
    """True when ::1 can be bound here."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback")


class Recorder:
    """The layer above, as seen by the transport: queues of everything it was told."""

    def __init__(self) -> None:
        self.messages: asyncio.Queue[tuple[Request | Response, Endpoint]] = asyncio.Queue()
        self.closed_flows: asyncio.Queue[Endpoint] = asyncio.Queue()
        self.parse_errors: asyncio.Queue[tuple[str, Endpoint]] = asyncio.Queue()

    def on_message(self, message: Request | Response, source: Endpoint) -> None:
        self.messages.put_nowait((message, source))

    def on_flow_closed(self, endpoint: Endpoint) -> None:
        self.closed_flows.put_nowait(endpoint)

    def on_parse_error(self, reason: str, source: Endpoint) -> None:
        self.parse_errors.put_nowait((reason, source))

    async def message(self) -> tuple[Request | Response, Endpoint]:
        return await asyncio.wait_for(self.messages.get(), WAIT)

    async def request(self) -> tuple[Request, Endpoint]:
        message, source = await self.message()
        assert isinstance(message, Request)
        return message, source

    async def closed_flow(self) -> Endpoint:
        return await asyncio.wait_for(self.closed_flows.get(), WAIT)

    async def parse_error(self) -> tuple[str, Endpoint]:
        return await asyncio.wait_for(self.parse_errors.get(), WAIT)


@dataclass
class Harness:
    """A TransportManager and the Recorder it reports to."""

    recorder: Recorder
    manager: TransportManager


def sip_request(
    method: str = "REGISTER",
    *,
    via: str = "SIP/2.0/UDP 127.0.0.1:5070;rport;branch=z9hG4bK-1",
    call_id: str = "call-1@test",
    cseq: int = 1,
    body: bytes = b"",
    extra: str = "",
) -> bytes:
    """A small well-formed request as bytes."""
    head = (
        f"{method} sip:example.org SIP/2.0\r\n"
        f"Via: {via}\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.org>;tag=a1\r\n"
        "To: <sip:alice@example.org>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: {cseq} {method}\r\n"
        "Contact: <sip:alice@127.0.0.1:5070>\r\n"
        f"{extra}"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class UdpPeer(asyncio.DatagramProtocol):
    """A UDP socket for the test side, with a queue of what it received."""

    def __init__(self) -> None:
        self.received: asyncio.Queue[tuple[bytes, tuple[str, int]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDPTransport is not a subclass of asyncio.DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait((data, addr))

    def send(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, addr)

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    async def receive(self) -> bytes:
        data, _ = await asyncio.wait_for(self.received.get(), WAIT)
        return data


async def read_message(reader: asyncio.StreamReader) -> bytes:
    """Read one SIP message (head + Content-Length body) from a stream."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() in (b"content-length", b"l"):
            length = int(value)
    body = await asyncio.wait_for(reader.readexactly(length), WAIT) if length else b""
    return head + body


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    """Everything until the peer closes the connection (a reset counts as a close)."""
    try:
        return await asyncio.wait_for(reader.read(), WAIT)
    except ConnectionResetError:
        return b""


async def close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a client connection, ignoring a peer that already reset it."""
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


@dataclass(frozen=True)
class Pki:
    """Files of a test CA and a server certificate signed by it."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> Pki:
    """A self-signed CA and a server certificate for 127.0.0.1, ::1 and localhost."""
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("sipushd test CA"))
        .issuer_name(_name("sipushd test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    pki.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    pki.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pki.key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return pki
