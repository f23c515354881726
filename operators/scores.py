"""Exponentially decaying scores: S(now) = clamp(S(last) * 2^(-(now - last)/half_life) + adds).

Values and the time of their last update live in two (contacts x scores) columns. The functions
are compiled (the shard kernel calls them per event) and also callable from Python.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from engine.compiled import kernel
from operators.contacts import Columns

NEVER = np.iinfo(np.int64).min
_LARGEST = sys.float_info.max


class ScoreColumns:
    def __init__(self, columns: Columns, n_scores: int) -> None:
        columns.add("score_value", np.float64, 0.0, max(n_scores, 1))
        columns.add("score_last", np.int64, NEVER, max(n_scores, 1))


# The base of the decay, passed in at run time: given the literal 2.0, the compiler turns pow(2, x)
# into exp2(x), which rounds differently from the pow Python uses in one case out of a thousand.
TWO = np.array([2.0])


@kernel(inline=True)
def decay(value, last_ms, now_ms, half_life_ms, two):  # type: ignore[no-untyped-def]
    """The value `now_ms - last_ms` after an update, without clamping (decay is never clamped)."""
    if value == 0.0 or now_ms == last_ms:
        return value
    return value * two[0] ** (-(now_ms - last_ms) / half_life_ms)


@kernel(inline=True)
def value_at(values, lasts, slot, score, now_ms, half_life_ms, two):  # type: ignore[no-untyped-def]
    last = lasts[slot, score]
    if last == NEVER:
        return 0.0
    return decay(values[slot, score], last, now_ms, half_life_ms, two)


@kernel(inline=True)
def update(values, lasts, slot, score, now_ms, half_life_ms, add, lo, hi, two):  # type: ignore[no-untyped-def]
    """Apply one event's summed `add` at `now_ms`; returns (before, after)."""
    before = value_at(values, lasts, slot, score, now_ms, half_life_ms, two)
    after = min(max(before + add, lo), hi)
    if not math.isfinite(after):  # absurd points (1e308 + 1e308): saturate rather than stop the engine
        after = math.copysign(_LARGEST, after)
    values[slot, score] = after
    lasts[slot, score] = now_ms
    return before, after


@kernel(inline=True)
def crossing_time(value, last_ms, half_life_ms, threshold):  # type: ignore[no-untyped-def]
    """First whole millisecond at which `value`, decaying from `last_ms`, is below `threshold`.

    `last + half_life * log2(S/T)`, rounded up (the SPEC's ceiling). Needs S >= T > 0.
    """
    # Ceil the offset, not the sum: at epoch-sized times the float sum loses the fraction.
    return last_ms + math.ceil(half_life_ms * math.log2(value / threshold))
