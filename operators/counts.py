"""Sliding-window counts, edge-triggered: fire when the count in (now - W, now] reaches K.

For a rule with `at_least: K` only the K most recent matching times matter: the new
event makes n = 1 + (stored times inside the window), and the count rises to exactly K
when exactly K - 1 stored times are inside. Each count rule owns K int64 columns, kept
as a ring (per-contact times never decrease, so the ring is also time-ordered).
"""

from __future__ import annotations

import numpy as np

from operators.contacts import Columns

EMPTY = np.iinfo(np.int64).min


class CountWindows:
    def __init__(self, columns: Columns, sizes: list[int]) -> None:
        self.columns = columns
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.sizes = list(sizes)
        width = max(sum(sizes), 1)
        columns.add("count_times", np.int64, EMPTY, width)
        columns.add("count_next", np.uint32, 0, max(len(sizes), 1))

    def add(self, slot: int, rule: int, now_ms: int, within_ms: int) -> bool:
        """Record a matching event at `now_ms`; True when the count has just reached K."""
        arrays = self.columns.arrays
        k = self.sizes[rule]
        off = self.offsets[rule]
        ring = arrays["count_times"][slot, off : off + k]
        inside = int(np.count_nonzero(ring > now_ms - within_ms))
        pos = int(arrays["count_next"][slot, rule])
        ring[pos] = now_ms
        arrays["count_next"][slot, rule] = (pos + 1) % k
        return inside == k - 1
