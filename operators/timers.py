"""One timer structure per shard: a deadline per (contact, timer rule) and a min-heap.

`deadline[slot, k]` is the truth (NONE when the timer is not pending); the heap is an
index for the watermark path and may hold stale entries, which are dropped when popped.
To keep the heap from growing with every re-arm (an `inactive_for` rule re-arms on every
event), at most one live heap entry is kept per (slot, k): a re-arm to a later deadline
pushes nothing, and the earlier entry, once popped and found stale, re-pushes the
current deadline. Re-arms to earlier deadlines do push; the heap is rebuilt from the
deadlines whenever it doubles, so it stays within twice the pending timers.

A heap entry is one int, `deadline << 40 | slot << 8 | k`, ordered as (deadline, slot, k):
44 bytes with its list slot against 132 for a tuple of three ints. The heap is derived state:
snapshots leave it out and `restore` rebuilds it from the deadlines.

Bytewax's own per-key timers are not used: with one key per contact the runtime scans
every key with a timer on every activation (see BYTEWAX-NOTES.md).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from operators.contacts import Columns
from rules.model import MAX_TIMER_TRIGGERS

NONE = np.iinfo(np.int64).max
_K_BITS = (MAX_TIMER_TRIGGERS - 1).bit_length()  # the loader refuses rule sets with more timer rules
_SLOT_BITS = 32  # contacts per shard: at most 2**32
_SLOT_SHIFT = _K_BITS
_DEADLINE_SHIFT = _SLOT_BITS + _K_BITS
_K_MASK = (1 << _K_BITS) - 1
_SLOT_MASK = (1 << _SLOT_BITS) - 1


def _entry(deadline: int, slot: int, k: int) -> int:
    return deadline << _DEADLINE_SHIFT | slot << _SLOT_SHIFT | k


def _unpack(entry: int) -> tuple[int, int, int]:
    return entry >> _DEADLINE_SHIFT, entry >> _SLOT_SHIFT & _SLOT_MASK, entry & _K_MASK


class TimerTable:
    COMPACT_MIN = 1024
    MAX_TIMERS = 1 << _K_BITS

    def __init__(self, columns: Columns, n_timers: int) -> None:
        if n_timers > self.MAX_TIMERS:
            raise ValueError(f"at most {self.MAX_TIMERS} timer rules per rule set, got {n_timers}")
        self.columns = columns
        self.n_timers = n_timers
        width = max(n_timers, 1)
        columns.add("timer_deadline", np.int64, NONE, width)
        columns.add("timer_queued", np.int64, NONE, width, derived=True)  # deadline of the live heap entry
        columns.add("timer_next", np.int64, NONE, derived=True)  # min over the row: the contact's next deadline
        columns.add("timer_event", object, None, width)  # the JSON line of the event that armed the timer
        self.heap: list[int] = []  # packed entries, see the module docstring
        self._compact_at = self.COMPACT_MIN
        self.pending_count = 0  # timers armed and not fired or cancelled, kept as they change

    def pending(self) -> int:
        return self.pending_count

    def next_for(self, slot: int) -> int:
        return int(self.columns.arrays["timer_next"][slot])

    def arm(self, slot: int, k: int, deadline: int, event: Any) -> None:
        """Arm (or re-arm: one call restarts a pending timer) timer k of a contact."""
        arrays = self.columns.arrays
        deadlines = arrays["timer_deadline"]
        previous = int(deadlines[slot, k])
        deadlines[slot, k] = deadline
        if previous == NONE:
            self.pending_count += 1
        arrays["timer_event"][slot, k] = event
        queued = arrays["timer_queued"]
        if deadline < queued[slot, k]:
            queued[slot, k] = deadline
            heapq.heappush(self.heap, _entry(deadline, slot, k))
            if len(self.heap) > self._compact_at:
                self._compact()
        self._refresh_next(slot, previous, deadline)

    def _compact(self) -> None:
        """Rebuild the heap from the deadlines: one entry per pending timer.

        Re-arms to an earlier deadline (a `falls_below` score lowered by negative points)
        leave superseded entries behind; rebuilding when the heap has doubled keeps it
        within twice the pending timers at amortised O(1) per push.
        """
        arrays = self.columns.arrays
        deadlines = arrays["timer_deadline"]
        slots, ks = np.nonzero(deadlines != NONE)
        queued = arrays["timer_queued"]
        queued.fill(NONE)
        queued[slots, ks] = deadlines[slots, ks]
        self.heap = [_entry(int(deadlines[s, k]), int(s), int(k)) for s, k in zip(slots, ks, strict=True)]
        heapq.heapify(self.heap)
        self._compact_at = max(self.COMPACT_MIN, 2 * len(self.heap))

    def cancel(self, slot: int, k: int) -> None:
        arrays = self.columns.arrays
        previous = int(arrays["timer_deadline"][slot, k])
        if previous != NONE:
            self.pending_count -= 1
            arrays["timer_deadline"][slot, k] = NONE
            arrays["timer_event"][slot, k] = None
            self._refresh_next(slot, previous, NONE)

    def deadline(self, slot: int, k: int) -> int:
        return int(self.columns.arrays["timer_deadline"][slot, k])

    def event(self, slot: int, k: int) -> Any:
        return self.columns.arrays["timer_event"][slot, k]

    def due_for_contact(self, slot: int, after_ms: int) -> list[tuple[int, int]]:
        """(deadline, k) of the contact's timers with deadline < after_ms, in firing order."""
        row = self.columns.arrays["timer_deadline"][slot]
        return sorted((int(d), k) for k, d in enumerate(row.tolist()) if d < after_ms)

    def pop_due(self, limit_ms: int, inclusive: bool) -> list[tuple[int, int, int]]:
        """Pending (deadline, slot, k) with deadline < limit (<= when inclusive), in order.

        Popped timers are not cleared here: the caller fires and clears each one.
        """
        arrays = self.columns.arrays
        deadlines = arrays["timer_deadline"]
        queued = arrays["timer_queued"]
        heap = self.heap
        # Entries below `bound` have a deadline below the limit (or at it, when inclusive).
        bound = (limit_ms + 1 if inclusive else limit_ms) << _DEADLINE_SHIFT
        out = []
        while heap and heap[0] < bound:
            d, slot, k = _unpack(heapq.heappop(heap))
            if queued[slot, k] != d:
                continue  # an extra entry superseded by an earlier re-arm
            queued[slot, k] = NONE
            current = int(deadlines[slot, k])
            if current == d:
                out.append((d, slot, k))
            elif current != NONE:
                queued[slot, k] = current
                heapq.heappush(heap, _entry(current, slot, k))
        return out

    def due_between(self, after_ms: int, until_ms: int) -> list[tuple[int, int, int]]:
        """Pending (deadline, slot, k) with after < deadline <= until, in order; state untouched."""
        deadlines = self.columns.arrays["timer_deadline"]
        slots, ks = np.nonzero((deadlines > after_ms) & (deadlines <= until_ms) & (deadlines != NONE))
        return sorted((int(deadlines[s, k]), int(s), int(k)) for s, k in zip(slots, ks, strict=True))

    def _refresh_next(self, slot: int, previous: int, current: int) -> None:
        """Keep `timer_next[slot]` = the row's minimum after one deadline went previous -> current."""
        arrays = self.columns.arrays
        timer_next = arrays["timer_next"]
        nxt = int(timer_next[slot])
        if current <= nxt:
            timer_next[slot] = current
        elif previous == nxt:  # the earliest timer moved later or went away: rescan the row
            # min() of a short list: a numpy reduction costs more than the row holds.
            timer_next[slot] = min(arrays["timer_deadline"][slot].tolist())

    def entries(self) -> list[tuple[int, int, int]]:
        """The heap's entries as (deadline, slot, k), in order (for inspection)."""
        return [_unpack(e) for e in sorted(self.heap)]

    def restore(self) -> None:
        """Rebuild the derived state (pending count, heap) after the columns were restored."""
        deadlines = self.columns.arrays["timer_deadline"]
        self.pending_count = int(np.count_nonzero(deadlines != NONE)) if self.n_timers else 0
        self.columns.arrays["timer_next"][:] = deadlines.min(axis=1)
        self._compact()
