"""Exponentially decaying scores: S(now) = clamp(S(last) * 2^(-(now - last)/half_life) + adds).

Values live in a (contacts x scores) float64 column. The time of a score's last update is kept as its
age, a uint32 of milliseconds behind its contact's clock (`score_age`): a score is only ever updated
at its contact's clock (an event's effective time), so the age is 0 then, and grows when the clock
moves on (`age`). A uint32 says 49.7 days; a score left alone for longer while its contact
kept sending events has its exact time moved into a hash table (`far`, operators/sparse.py, keyed by
`slot * scores + score`) and the age AGE_FAR. Ages of contacts that send nothing never change, so
the table holds only what came back after seven weeks. Two int64 times per contact were 17.6 of the
state benchmark's bytes per contact at 1M contacts (the example rules' two scores); the ages take 8.8.
Snapshots keep the times (`lasts`, `restore_lasts`).

The functions are compiled (the shard kernel calls them per event) and also callable from Python.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from operators import sparse
from operators.contacts import Columns
from operators.sparse import SparseTable

NEVER = np.iinfo(np.int64).min
AGE_NEVER = 0xFFFFFFFF  # never updated
AGE_FAR = 0xFFFFFFFE  # updated further back than an age can say: the time is in the far table
_LARGEST = sys.float_info.max


class ScoreColumns:
    """The scores' columns in a shard's `Columns`, and the table of times too far back for an age."""

    def __init__(self, columns: Columns, n_scores: int) -> None:
        self.columns = columns
        self.width = max(n_scores, 1)
        columns.add("score_value", np.float64, 0.0, self.width)
        columns.add("score_age", np.uint32, AGE_NEVER, self.width)
        self.far = SparseTable.per_slot(self.width)

    def arrays(self) -> tuple[Any, ...]:
        return self.far.arrays()

    def make_room(self) -> None:
        """Room for the far times one event may add (one per score)."""
        self.far.make_room(self.width)

    def nbytes(self) -> int:
        return self.far.nbytes()

    def lasts(self, size: int) -> npt.NDArray[np.int64]:
        """The first `size` contacts' last update times (NEVER: not updated yet), as snapshots keep them."""
        a = self.columns.arrays
        ages = a["score_age"][:size]
        lasts = a["clock"][:size, None] - ages.astype(np.int64)
        lasts[ages == AGE_NEVER] = NEVER
        for slot, score in zip(*np.nonzero(ages == AGE_FAR), strict=True):
            lasts[slot, score] = self.far.get(int(slot) * self.width + int(score), NEVER)
        return lasts

    def restore_lasts(self, lasts: npt.NDArray[np.int64], size: int) -> None:
        """Set the first `size` contacts' ages from their last update times and their clocks."""
        a = self.columns.arrays
        ages = a["clock"][:size, None] - lasts
        far = (lasts != NEVER) & (ages >= AGE_FAR)
        ages[lasts == NEVER] = AGE_NEVER
        ages[far] = AGE_FAR
        a["score_age"][:size] = ages
        slots, scores = np.nonzero(far)
        self.far.make_room(len(slots))
        sparse.put_all(self.far.arrays(), slots.astype(np.int64) * self.width + scores, lasts[far])


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
def last_update(ages, far, clock, slot, score):  # type: ignore[no-untyped-def]
    """When the score was last updated (NEVER: not yet)."""
    age = ages[slot, score]
    if age == AGE_NEVER:
        return NEVER
    if age == AGE_FAR:
        return sparse.get(far, np.int64(slot) * ages.shape[1] + score, NEVER)
    return clock[slot] - np.int64(age)


@kernel(inline=True)
def value_at(values, ages, far, clock, slot, score, now_ms, half_life_ms, two):  # type: ignore[no-untyped-def]
    last = last_update(ages, far, clock, slot, score)
    if last == NEVER:
        return 0.0
    return decay(values[slot, score], last, now_ms, half_life_ms, two)


@kernel(inline=True)
def age(ages, far, slot, before_ms, now_ms):  # type: ignore[no-untyped-def]
    """The contact's clock moved from `before_ms` to `now_ms` (later; `before_ms` not NEVER): its scores'
    ages grow by the difference. An age that would pass what a uint32 says moves its time into `far` (the
    caller keeps room for one per score)."""
    step = now_ms - before_ms
    for s in range(ages.shape[1]):
        current = ages[slot, s]
        if current >= AGE_FAR:
            continue
        grown = np.int64(current) + step
        if grown < AGE_FAR:
            ages[slot, s] = grown
        else:
            sparse.put(far, np.int64(slot) * ages.shape[1] + s, before_ms - np.int64(current))
            ages[slot, s] = AGE_FAR


@kernel(inline=True)
def update(values, ages, far, clock, slot, score, half_life_ms, add, lo, hi, two):  # type: ignore[no-untyped-def]
    """Apply one event's summed `add` at the contact's clock; returns (before, after)."""
    before = value_at(values, ages, far, clock, slot, score, clock[slot], half_life_ms, two)
    after = min(max(before + add, lo), hi)
    if not math.isfinite(after):  # absurd points (1e308 + 1e308): saturate rather than stop the engine
        after = math.copysign(_LARGEST, after)
    values[slot, score] = after
    ages[slot, score] = 0
    return before, after


@kernel(inline=True)
def crossing_time(value, last_ms, half_life_ms, threshold):  # type: ignore[no-untyped-def]
    """First whole millisecond at which `value`, decaying from `last_ms`, is below `threshold`.

    `last + half_life * log2(S/T)`, rounded up (the SPEC's ceiling). Needs S >= T > 0.
    """
    # Ceil the offset, not the sum: at epoch-sized times the float sum loses the fraction.
    return last_ms + math.ceil(half_life_ms * math.log2(value / threshold))
