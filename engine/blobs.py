"""Byte strings as spans of one buffer: a batch's contact ids and event summaries.

A batch's contact ids and summaries live in `Blobs` instead of one Python `bytes` each. Blob i is
`data[starts[i]:ends[i]]`; the spans need not be contiguous or in order, and several `Blobs` may
share one buffer: routing a batch to its shards (`take`) or de-duplicating it gathers the spans, never
the bytes (the summaries are most of a batch's bytes: that copy was a tenth of the engine's time). A
pickle (a batch crossing to another process) holds only the blobs' own bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from engine.rawmem import copy_bytes

__all__ = ["Blobs", "gather_spans"]


@dataclass
class Blobs:
    """Blob i is `data[starts[i]:ends[i]]`."""

    data: npt.NDArray[np.uint8]
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]

    @classmethod
    def empty(cls) -> Blobs:
        return cls(np.zeros(0, np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def of(cls, items: Iterable[bytes]) -> Blobs:
        items = list(items)
        lengths = np.array([len(b) for b in items], np.int64)
        ends = np.cumsum(lengths)
        return cls(np.frombuffer(b"".join(items), np.uint8).copy(), ends - lengths, ends)

    @classmethod
    def packed(cls, data: npt.NDArray[np.uint8], offsets: npt.NDArray[np.int64]) -> Blobs:
        """Blobs written end to end: blob i is data[offsets[i]:offsets[i + 1]]."""
        return cls(data, offsets[:-1], offsets[1:])

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.ends[i]].tobytes()

    def lengths(self) -> npt.NDArray[np.int64]:
        return self.ends - self.starts

    def total_bytes(self) -> int:
        """The blobs' own bytes (the buffer may hold more: other blobs share it)."""
        return int((self.ends - self.starts).sum())

    def take(self, idx: npt.NDArray[np.intp]) -> Blobs:
        """Blobs idx[0], idx[1], ... in that order, in the same buffer."""
        return Blobs(self.data, self.starts[idx], self.ends[idx])

    def slice(self, a: int, b: int) -> Blobs:
        """Blobs a .. b-1, in the same buffer."""
        return Blobs(self.data, self.starts[a:b], self.ends[a:b])

    def compact(self) -> Blobs:
        """The same blobs end to end in a buffer of their own."""
        lengths = self.ends - self.starts
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.empty(int(offsets[-1]), np.uint8)
        gather_spans(self.data, self.starts, self.ends, data, offsets)
        return Blobs.packed(data, offsets)

    def __getstate__(self) -> dict[str, Any]:
        own = self.compact()
        return {"data": own.data, "starts": own.starts, "ends": own.ends}

    def nbytes(self) -> int:
        return int(self.total_bytes() + self.starts.nbytes + self.ends.nbytes)

    @staticmethod
    def concat(parts: Sequence[Blobs]) -> Blobs:
        if len(parts) == 1:
            return parts[0]
        if all(p.data is parts[0].data for p in parts):
            return Blobs(parts[0].data, np.concatenate([p.starts for p in parts]), np.concatenate([p.ends for p in parts]))
        own = [p.compact() for p in parts]
        bases = np.cumsum([0, *[len(p.data) for p in own[:-1]]])
        return Blobs(np.concatenate([p.data for p in own]),
                     np.concatenate([p.starts + b for p, b in zip(own, bases, strict=True)]),
                     np.concatenate([p.ends + b for p, b in zip(own, bases, strict=True)]))


@kernel
def gather_spans(src, starts, ends, dst, offsets):  # type: ignore[no-untyped-def]
    """dst[offsets[i]:offsets[i + 1]] = src[starts[i]:ends[i]]."""
    for i in range(len(starts)):
        copy_bytes(dst, offsets[i], src, starts[i], ends[i] - starts[i])
