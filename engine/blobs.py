"""Byte strings stored end to end: one buffer and the offsets between them.

A batch's contact ids and event summaries, and a shard's contact ids and the events its timers
keep, live in `Blobs` instead of one Python `bytes` each: a gather or a slice is one compiled
copy, a snapshot or a pickle is two arrays.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from engine.rawmem import copy_bytes

__all__ = ["Blobs", "gather_spans"]

@dataclass
class Blobs:
    """Blob i is `data[offsets[i]:offsets[i + 1]]`."""

    data: npt.NDArray[np.uint8]
    offsets: npt.NDArray[np.int64]  # n + 1, offsets[0] == 0

    @classmethod
    def empty(cls) -> Blobs:
        return cls(np.zeros(0, np.uint8), np.zeros(1, np.int64))

    @classmethod
    def of(cls, items: Iterable[bytes]) -> Blobs:
        items = list(items)
        offsets = np.zeros(len(items) + 1, np.int64)
        np.cumsum([len(b) for b in items], out=offsets[1:])
        return cls(np.frombuffer(b"".join(items), np.uint8).copy(), offsets)

    @classmethod
    def from_spans(cls, buf: npt.NDArray[np.uint8], starts: npt.NDArray[np.int64],
                   ends: npt.NDArray[np.int64]) -> Blobs:
        """The spans `buf[starts[i]:ends[i]]`, copied."""
        offsets = np.zeros(len(starts) + 1, np.int64)
        np.cumsum(ends - starts, out=offsets[1:])
        data = np.empty(int(offsets[-1]), np.uint8)
        gather_spans(buf, starts, ends, data, offsets)
        return cls(data, offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> bytes:
        return self.data[self.offsets[i]:self.offsets[i + 1]].tobytes()

    def lengths(self) -> npt.NDArray[np.int64]:
        return np.diff(self.offsets)

    def take(self, idx: npt.NDArray[np.intp]) -> Blobs:
        """Blobs idx[0], idx[1], ... in that order."""
        return Blobs.from_spans(self.data, self.offsets[:-1][idx], self.offsets[1:][idx])

    def slice(self, a: int, b: int) -> Blobs:
        """Blobs a .. b-1; the buffer is a view (a pickle holds only its own bytes)."""
        lo, hi = int(self.offsets[a]), int(self.offsets[b])
        return Blobs(self.data[lo:hi], self.offsets[a:b + 1] - lo)

    def nbytes(self) -> int:
        return int(self.data.nbytes + self.offsets.nbytes)

    @staticmethod
    def concat(parts: Sequence[Blobs]) -> Blobs:
        if len(parts) == 1:
            return parts[0]
        sizes = [int(p.offsets[-1]) for p in parts]
        bases = np.cumsum([0, *sizes[:-1]])
        offsets = np.concatenate([np.zeros(1, np.int64)] + [p.offsets[1:] + base for p, base in zip(parts, bases, strict=True)])
        return Blobs(np.concatenate([p.data[:size] for p, size in zip(parts, sizes, strict=True)]), offsets)


@kernel
def gather_spans(src, starts, ends, dst, offsets):  # type: ignore[no-untyped-def]
    """dst[offsets[i]:offsets[i + 1]] = src[starts[i]:ends[i]]."""
    for i in range(len(starts)):
        copy_bytes(dst, offsets[i], src, starts[i], ends[i] - starts[i])
