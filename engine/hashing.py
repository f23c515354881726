"""Stable hashes of byte strings, compiled: routing (crc32) and 63-bit digests of ids.

Both are pure functions of the bytes, never Python's salted `hash`, so they agree across
processes, restarts and the collector (which routes with `zlib.crc32`, the same crc32).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from engine.rawmem import load_u64

__all__ = ["NO_DIGEST", "crc32_spans", "digest", "digest_of", "digest_spans", "digests"]

NO_DIGEST = 0  # the digest of "no id"; a real id never digests to it

_MULTIPLIER = np.uint64(0x9E3779B97F4A7C15)
_SEED = np.uint64(0x2545F4914F6CDD1D)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S1 = np.uint64(1)
_S8 = np.uint64(8)


def _crc_table() -> npt.NDArray[np.uint32]:
    table = np.zeros(256, np.uint32)
    for n in range(256):
        c = n
        for _ in range(8):
            c = (0xEDB88320 ^ (c >> 1)) if c & 1 else c >> 1
        table[n] = c
    return table


_CRC_TABLE = _crc_table()


@kernel(inline=True)
def _finalize(h):  # type: ignore[no-untyped-def]
    # splitmix64's finaliser: every input bit affects every output bit.
    h = (h ^ (h >> _S30)) * _MIX1
    h = (h ^ (h >> _S27)) * _MIX2
    return h ^ (h >> _S31)


@kernel(inline=True)
def digest(buf, start, end):  # type: ignore[no-untyped-def]
    """The bytes read as little-endian 64-bit words (the last one zero-padded), each mixed into the
    state with a multiply and the finaliser, then the length; never NO_DIGEST."""
    h = _SEED
    i = np.int64(start)
    while i + 8 <= end:
        h = _finalize((h ^ load_u64(buf, i)) * _MULTIPLIER)
        i += 8
    if i < end:
        rest = np.uint64(end - i)
        if i + 8 <= len(buf):  # one load, the bytes past the end masked off
            word = load_u64(buf, i) & ((_S1 << (rest * _S8)) - _S1)
        else:
            word = np.uint64(0)
            shift = np.uint64(0)
            for j in range(i, end):
                word |= np.uint64(buf[j]) << shift
                shift += _S8
        h = _finalize((h ^ word) * _MULTIPLIER)
    h = _finalize(h ^ np.uint64(end - start))
    d = np.int64(h >> _S1)
    return d if d != NO_DIGEST else np.int64(1)


@kernel
def digest_spans(buf, starts, ends, out):  # type: ignore[no-untyped-def]
    """out[i] = digest of buf[starts[i]:ends[i]], or NO_DIGEST where starts[i] < 0 (no id)."""
    for i in range(len(starts)):
        out[i] = NO_DIGEST if starts[i] < 0 else digest(buf, starts[i], ends[i])
    return out


@kernel
def crc32_spans(buf, starts, ends, out):  # type: ignore[no-untyped-def]
    """out[i] = zlib.crc32(buf[starts[i]:ends[i]])."""
    table = _CRC_TABLE
    for i in range(len(starts)):
        c = np.uint32(0xFFFFFFFF)
        for j in range(starts[i], ends[i]):
            c = table[(c ^ np.uint32(buf[j])) & np.uint32(0xFF)] ^ (c >> np.uint32(8))
        out[i] = c ^ np.uint32(0xFFFFFFFF)
    return out


def digests(ids: Sequence[str | None]) -> npt.NDArray[np.int64]:
    """Digests of ids given as strings (NO_DIGEST for None), for the paths that hold Python strings."""
    raw = [b"" if m is None else m.encode("utf-8", "surrogatepass") for m in ids]
    lengths = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    starts[[m is None for m in ids]] = -1
    buf = np.frombuffer(b"".join(raw) or b"\0", np.uint8)
    return digest_spans(buf, starts, ends, np.empty(len(raw), np.int64))


def digest_of(value: str | None) -> int:
    """The digest of one id given as a string."""
    return int(digests([value])[0])
