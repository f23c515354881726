"""Firing modifiers: `unless` (a matching event in (t - W, t]) and `cooldown` (no firing
in (t, t + W) after a firing at t), plus the SPEC's at-most-once per contact and event
time. A suppressed firing records nothing, so it starts no cooldown.

Both need one time per contact and column: when an `unless` matcher last held (one column per
distinct matcher) and when each trigger last fired. Most contacts never fire most rules and never
send an `unless` event (an order, an unsubscribe), so dense columns were mostly NEVER: with the
example rules at 1M contacts they took 109 of 672 bytes per contact. The times set are kept
instead in a `SparseTable` (operators/sparse.py) per shard, keyed by `slot * width + column`, the
unless matchers' columns first, then the triggers' (uint32 keys for up to 256 columns). A time is never removed (a contact's last
firing matters for as long as its cooldown, and the table has no cheaper moment to learn that
than a scan).

Compiled code takes `SuppressionTimes.arrays()`: the table's arrays and a layout array (width,
unless columns).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from engine.compiled import kernel
from operators import sparse
from operators.sparse import SparseTable

NEVER = np.iinfo(np.int64).min
# Why a firing is suppressed; REASONS[code - 1] names code.
NOT_SUPPRESSED, UNLESS, COOLDOWN, SAME_TIME = range(4)
REASONS = ("unless", "cooldown", "same_time")

WIDTH, N_UNLESS = range(2)


class SuppressionTimes:
    """The `unless` and last-fired times of a shard's contacts; see the module docstring."""

    def __init__(self, n_unless: int, n_triggers: int) -> None:
        self.n_unless = n_unless
        self.width = n_unless + n_triggers
        self.table = SparseTable.per_slot(self.width)
        self._layout = np.array([self.width, n_unless], np.int64)

    def arrays(self) -> tuple[Any, ...]:
        return (*self.table.arrays(), self._layout)

    def __len__(self) -> int:
        return len(self.table)

    def make_room(self, puts: int) -> None:
        self.table.make_room(puts)

    def unless_seen(self, slot: int, unless: int) -> int:
        """When `unless` matcher `unless` last held for the contact in `slot` (NEVER: not yet)."""
        return self.table.get(slot * self.width + unless, NEVER)

    def last_fired(self, slot: int, trigger: int) -> int:
        return self.table.get(slot * self.width + self.n_unless + trigger, NEVER)

    def nbytes(self) -> int:
        return self.table.nbytes() + int(self._layout.nbytes)

    def snapshot(self) -> dict[str, Any]:
        return {**self.table.snapshot(), "width": self.width, "unless": self.n_unless}

    def snapshot_bytes(self) -> int:
        return 16 * len(self)

    def restore(self, snap: dict[str, Any]) -> None:
        if (snap["width"], snap["unless"]) != (self.width, self.n_unless):
            raise ValueError(f"suppression times of {snap['unless']} unless matchers and width {snap['width']}, "
                             f"the rules have {self.n_unless} and {self.width}")
        self.table = SparseTable.restore(snap, self.table.max_key)

    @staticmethod
    def from_columns(unless_seen: npt.NDArray[np.int64], last_fired: npt.NDArray[np.int64],
                     n_unless: int, n_triggers: int) -> dict[str, Any]:
        """The snapshot of the dense columns that snapshot format 5 and earlier kept (each had one
        column even when the rules have no unless matcher or no trigger)."""
        dense = np.concatenate([unless_seen[:, :n_unless], last_fired[:, :n_triggers]], axis=1)
        slots, columns = np.nonzero(dense != NEVER)
        return {"keys": slots.astype(np.int64) * dense.shape[1] + columns, "values": dense[slots, columns],
                "width": dense.shape[1], "unless": n_unless}


# -- compiled part ------------------------------------------------------------------------------------


@kernel(inline=True)
def saw(times, slot, unless, now_ms):  # type: ignore[no-untyped-def]
    """`unless` matcher `unless` held for the contact at `now_ms`."""
    sparse.put(times, np.int64(slot) * times[3][WIDTH] + unless, now_ms)


@kernel(inline=True)
def fired(times, slot, trigger, at_ms):  # type: ignore[no-untyped-def]
    layout = times[3]
    sparse.put(times, np.int64(slot) * layout[WIDTH] + layout[N_UNLESS] + trigger, at_ms)


@kernel(inline=True)
def reason(times, slot, trigger, at_ms, unless, unless_within_ms, cooldown_ms):  # type: ignore[no-untyped-def]
    """Why a firing at `at_ms` is suppressed (UNLESS, SAME_TIME, COOLDOWN), or NOT_SUPPRESSED."""
    layout = times[3]
    row = np.int64(slot) * layout[WIDTH]
    if unless >= 0:
        seen = sparse.get(times, row + unless, NEVER)
        if seen != NEVER and at_ms - unless_within_ms < seen <= at_ms:
            return UNLESS
    last = sparse.get(times, row + layout[N_UNLESS] + trigger, NEVER)
    if last != NEVER:
        if at_ms == last:
            return SAME_TIME
        if at_ms < last + cooldown_ms:
            return COOLDOWN
    return NOT_SUPPRESSED
