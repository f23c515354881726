"""Exponentially decaying scores: S(now) = clamp(S(last) * 2^(-(now - last)/half_life) + adds).

Values and the time of their last update live in two (contacts x scores) columns.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from operators.contacts import Columns

NEVER = np.iinfo(np.int64).min


def decay(value: float, last_ms: int, now_ms: int, half_life_ms: float) -> float:
    """The value `now_ms - last_ms` after an update, without clamping (decay is never clamped)."""
    if value == 0.0 or now_ms == last_ms:
        return value
    return value * 2.0 ** (-(now_ms - last_ms) / half_life_ms)


def crossing_time(value: float, last_ms: int, half_life_ms: float, threshold: float) -> int:
    """First whole millisecond at which `value`, decaying from `last_ms`, is below `threshold`.

    `last + half_life * log2(S/T)`, rounded up (the SPEC's ceiling). Needs S >= T > 0.
    """
    # Ceil the offset, not the sum: at epoch-sized times the float sum loses the fraction.
    return last_ms + math.ceil(half_life_ms * math.log2(value / threshold))


class ScoreColumns:
    def __init__(self, columns: Columns, n_scores: int) -> None:
        self.columns = columns
        columns.add("score_value", np.float64, 0.0, n_scores)
        columns.add("score_last", np.int64, NEVER, n_scores)

    def value_at(self, slot: int, score: int, now_ms: int, half_life_ms: float) -> float:
        arrays = self.columns.arrays
        last = int(arrays["score_last"][slot, score])
        if last == NEVER:
            return 0.0
        return decay(float(arrays["score_value"][slot, score]), last, now_ms, half_life_ms)

    def update(self, slot: int, score: int, now_ms: int, half_life_ms: float, add: float,
               lo: float, hi: float) -> tuple[float, float]:
        """Apply one event's summed `add` at `now_ms`; returns (before, after)."""
        before = self.value_at(slot, score, now_ms, half_life_ms)
        after = min(max(before + add, lo), hi)
        if not math.isfinite(after):  # absurd points (1e308 + 1e308): saturate rather than stop the engine
            after = math.copysign(sys.float_info.max, after)
        arrays = self.columns.arrays
        arrays["score_value"][slot, score] = after
        arrays["score_last"][slot, score] = now_ms
        return before, after

    def last_update(self, slot: int, score: int) -> tuple[float, int]:
        arrays = self.columns.arrays
        return float(arrays["score_value"][slot, score]), int(arrays["score_last"][slot, score])
