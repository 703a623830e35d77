"""The caching Huffman encoder: the same bytes as hpack's, long values encoded once."""

from __future__ import annotations

import secrets

import h2.config
import h2.connection
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from sipushd.push import hpack_cache


def test_same_encoding_as_hpack_and_long_values_cached() -> None:
    plain = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)
    cached = hpack_cache.CachingHuffmanEncoder()
    token = b"Bearer ya29." + secrets.token_urlsafe(760).encode()
    for value in (token, token, b"application/json", b"", token):
        assert cached.encode(value) == plain.encode(value)
    assert cached.hits == 2  # the short values are not kept


def test_cache_is_bounded() -> None:
    cached = hpack_cache.CachingHuffmanEncoder()
    for index in range(hpack_cache.MAX_ENTRIES * 3):
        cached.encode(b"Bearer %d-" % index + b"x" * 100)
    assert len(cached._cache) <= hpack_cache.MAX_ENTRIES


def test_never_indexed_header_blocks_are_unchanged() -> None:
    authorization = NeverIndexedHeaderTuple(
        b"authorization", b"Bearer " + secrets.token_urlsafe(760).encode()
    )
    headers = [(b":method", b"POST"), authorization, (b"content-length", b"312")]
    reference, patched = Encoder(), Encoder()
    coder = hpack_cache.install(patched)
    decoder = Decoder()
    for _ in range(3):
        block = patched.encode(headers)
        assert block == reference.encode(headers)
        assert decoder.decode(block, raw=True) == headers
    assert coder.hits == 2


def test_installs_on_an_h2_connections_encoder() -> None:
    # The hook is hpack's Encoder.huffman_coder attribute, which h2 uses for every header block.
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    coder = hpack_cache.install(conn.encoder)
    conn.initiate_connection()
    headers = [
        (":method", "GET"),
        (":path", "/"),
        (":scheme", "https"),
        (":authority", "x"),
        ("authorization", "Bearer " + "t" * 200),  # h2 makes it never-indexed
    ]
    for stream_id in (1, 3):
        conn.send_headers(stream_id, headers, end_stream=True)
    assert coder.hits == 1
