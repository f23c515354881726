"""Sliding-window counts, edge-triggered: fire when the count in (now - W, now] reaches K.

For a rule with `at_least: K` only the K most recent matching times matter: the new
event makes n = 1 + (stored times inside the window), and the count rises to exactly K
when exactly K - 1 stored times are inside. Each count rule owns K int64 columns, kept
as a ring (per-contact times never decrease, so the ring is also time-ordered).
"""

from __future__ import annotations

import numpy as np

from engine.compiled import kernel
from operators.contacts import Columns

EMPTY = np.iinfo(np.int64).min


class CountWindows:
    def __init__(self, columns: Columns, sizes: list[int]) -> None:
        columns.add("count_times", np.int64, EMPTY, max(sum(sizes), 1))
        columns.add("count_next", np.uint16, 0, max(len(sizes), 1))


@kernel(inline=True)
def add(times, following, slot, rule, offset, size, now_ms, within_ms):  # type: ignore[no-untyped-def]
    """Record a matching event of count rule `rule` (its ring: `size` columns from `offset`) at
    `now_ms`; True when the count has just reached its K (= `size`)."""
    inside = 0
    for j in range(offset, offset + size):
        if times[slot, j] > now_ms - within_ms:
            inside += 1
    pos = following[slot, rule]
    times[slot, offset + pos] = now_ms
    following[slot, rule] = (pos + 1) % size
    return inside == size - 1
