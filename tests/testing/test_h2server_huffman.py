"""The mock's memoized HPACK Huffman decoding: the same headers, long values decoded once."""

from __future__ import annotations

import secrets

import hpack.huffman_table
from hpack import Decoder, Encoder, NeverIndexedHeaderTuple

from sipushd.testing.h2server import memoize_huffman_decoding


def test_long_values_decode_the_same_and_once() -> None:
    memoized = memoize_huffman_decoding()
    assert memoize_huffman_decoding() is memoized  # not wrapped twice
    token = b"Bearer ya29." + secrets.token_urlsafe(760).encode()
    headers = [
        (b":method", b"POST"),
        NeverIndexedHeaderTuple(b"authorization", token),
        (b"content-length", b"312"),
    ]
    encoder, decoder = Encoder(), Decoder()
    hits = memoized.hits
    for _ in range(3):
        assert decoder.decode(encoder.encode(headers), raw=True) == headers
    assert memoized.hits - hits == 2  # the token; content-length is too short to keep
    encoded = encoder.huffman_coder.encode(token)
    assert memoized.cache[encoded] == hpack.huffman_table.decode_huffman(encoded) == token
