"""TLS client contexts for the push providers, built explicitly.

The environment's SSL_CERT_FILE / REQUESTS_CA_BUNDLE are ignored on purpose:
the trust store is certifi's bundle plus the configured ``ca_file``, so a
push goes to the same place whatever shell started the daemon.
"""

from __future__ import annotations

import ssl
from pathlib import Path

import certifi


def client_context(
    ca_file: Path | None = None, *, cert_file: Path | None = None, alpn: tuple[str, ...] = ("h2",)
) -> ssl.SSLContext:
    """A verifying TLS 1.2+ client context trusting certifi + ``ca_file``, with a client cert."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_verify_locations(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    if cert_file is not None:
        # One PEM file with the certificate and its private key (Apple's .p12 converted).
        context.load_cert_chain(str(cert_file))
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context
