"""A Huffman encoder for HPACK that remembers the encoding of long header values.

RFC 7541 §7.1.3: a sensitive header such as ``authorization`` is sent as a
never-indexed literal, so it never enters the dynamic table and is encoded
again in every request. h2 marks ``authorization`` so (``secure_headers``),
and hpack Huffman-codes each literal (RFC 7541 §5.2) in pure Python, a loop
over every byte. An FCM access token is about 1 KB: encoding it cost
~240 µs, about a third of a push's CPU time.

The value is the same on every push until the token is refreshed, so the
encoding is kept: the bytes on the wire do not change, only the work. Short
values (content-length, ...) are encoded as before. The cache is per HPACK
encoder, that is per connection, and bounded.
"""

from __future__ import annotations

from hpack import Encoder
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

MIN_CACHED = 64  # shorter values cost little to encode
MAX_ENTRIES = 8  # a few access tokens (one per refresh), bounded however many


class CachingHuffmanEncoder(HuffmanEncoder):
    """hpack's request-side Huffman encoder, remembering values of ``MIN_CACHED`` bytes or more."""

    def __init__(self) -> None:
        super().__init__(REQUEST_CODES, REQUEST_CODES_LENGTH)
        self._cache: dict[bytes, bytes] = {}
        self.hits = 0

    def encode(self, bytes_to_encode: bytes | None) -> bytes:
        if bytes_to_encode is None or len(bytes_to_encode) < MIN_CACHED:
            return super().encode(bytes_to_encode)
        encoded = self._cache.get(bytes_to_encode)
        if encoded is not None:
            self.hits += 1
            return encoded
        encoded = super().encode(bytes_to_encode)
        if len(self._cache) >= MAX_ENTRIES:
            self._cache.clear()  # old tokens: gone after a refresh
        self._cache[bytes(bytes_to_encode)] = encoded
        return encoded


def install(encoder: Encoder) -> CachingHuffmanEncoder:
    """Give ``encoder`` (an h2 connection's HPACK encoder) a caching Huffman coder."""
    coder = CachingHuffmanEncoder()
    encoder.huffman_coder = coder
    return coder
