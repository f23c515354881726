"""BLAKE2b (RFC 7693) with a 16-byte digest, compiled: the trigger ids of the compiled record writer.

A trigger's id is `blake2b(rule \\x1f contact \\x1f at \\x1f channel, digest_size=16)` as 32 hex digits
(engine/records.py, `trigger_id`). Records are written in compiled code a whole shard batch at a time,
so the hash is too; `hashlib.blake2b` gives the same digests (tests/engine/test_records.py).
"""

from __future__ import annotations

import numpy as np

from engine.compiled import kernel

__all__ = ["blake2b_128_hex"]

_IV = np.array([
    0x6A09E667F3BCC908, 0xBB67AE8584CAA73B, 0x3C6EF372FE94F82B, 0xA54FF53A5F1D36F1,
    0x510E527FADE682D1, 0x9B05688C2B3E6C1F, 0x1F83D9ABFB41BD6B, 0x5BE0CD19137E2179,
], np.uint64)
_SIGMA = np.array([
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    [14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3],
    [11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4],
    [7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8],
    [9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13],
    [2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9],
    [12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11],
    [13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10],
    [6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5],
    [10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0],
], np.uint8)
_HEX = np.frombuffer(b"0123456789abcdef", np.uint8).copy()
_DIGEST_BYTES = 16
_PARAMETERS = np.uint64(0x01010000 ^ _DIGEST_BYTES)  # fanout 1, depth 1, no key, 16-byte digest
_S8 = np.uint64(8)
_255 = np.uint64(255)


@kernel(inline=True)
def _rotr(x, n):  # type: ignore[no-untyped-def]
    return (x >> np.uint64(n)) | (x << np.uint64(64 - n))


@kernel(inline=True)
def _g(v, a, b, c, d, x, y):  # type: ignore[no-untyped-def]
    v[a] = v[a] + v[b] + x
    v[d] = _rotr(v[d] ^ v[a], 32)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 24)
    v[a] = v[a] + v[b] + y
    v[d] = _rotr(v[d] ^ v[a], 16)
    v[c] = v[c] + v[d]
    v[b] = _rotr(v[b] ^ v[c], 63)


@kernel(inline=True)
def _compress(h, m, v, counter, last):  # type: ignore[no-untyped-def]
    sigma = _SIGMA
    for i in range(8):
        v[i] = h[i]
        v[i + 8] = _IV[i]
    v[12] ^= counter
    if last:
        v[14] = ~v[14]
    for r in range(12):
        s = sigma[r % 10]
        _g(v, 0, 4, 8, 12, m[s[0]], m[s[1]])
        _g(v, 1, 5, 9, 13, m[s[2]], m[s[3]])
        _g(v, 2, 6, 10, 14, m[s[4]], m[s[5]])
        _g(v, 3, 7, 11, 15, m[s[6]], m[s[7]])
        _g(v, 0, 5, 10, 15, m[s[8]], m[s[9]])
        _g(v, 1, 6, 11, 12, m[s[10]], m[s[11]])
        _g(v, 2, 7, 8, 13, m[s[12]], m[s[13]])
        _g(v, 3, 4, 9, 14, m[s[14]], m[s[15]])
    for i in range(8):
        h[i] ^= v[i] ^ v[i + 8]


@kernel(inline=True)
def _load_block(data, start, n, m):  # type: ignore[no-untyped-def]
    """The block data[start:start + n] (n <= 128, zero-padded) as 16 little-endian words."""
    for w in range(16):
        m[w] = np.uint64(0)
    for k in range(n):
        m[k >> 3] |= np.uint64(data[start + k]) << (np.uint64(k & 7) * _S8)


@kernel
def blake2b_128_hex(data, start, length, scratch, out, at):  # type: ignore[no-untyped-def]
    """Write the 16-byte BLAKE2b digest of data[start:start + length] to out[at:at + 32] as lowercase hex;
    returns at + 32. `scratch` is a uint64 array of 40 words (state, message block, work vector)."""
    h = scratch[0:8]
    m = scratch[8:24]
    v = scratch[24:40]
    for i in range(8):
        h[i] = _IV[i]
    h[0] ^= _PARAMETERS
    done = 0
    while length - done > 128:
        _load_block(data, start + done, 128, m)
        done += 128
        _compress(h, m, v, np.uint64(done), False)
    _load_block(data, start + done, length - done, m)
    _compress(h, m, v, np.uint64(length), True)
    hexd = _HEX
    for k in range(_DIGEST_BYTES):
        byte = (h[k >> 3] >> (np.uint64(k & 7) * _S8)) & _255
        out[at + 2 * k] = hexd[byte >> np.uint64(4)]
        out[at + 2 * k + 1] = hexd[byte & np.uint64(15)]
    return at + 2 * _DIGEST_BYTES
